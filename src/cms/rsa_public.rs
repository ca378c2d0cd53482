//! RSA encryption with PKCS#1 v1.5 padding (RSAES-PKCS1-v1_5, RFC 8017 §7.2.1) for the
//! recipients aws-lc-rs will not encrypt to: moduli of 1024 up to 2048 bits, which is what
//! `scepclient -keySize 1024` and older devices ask to be answered with.
//!
//! Encryption uses only the recipient's public key, so no secret of ours is involved and the
//! crypto policy (private-key operations through aws-lc-rs) is kept. The content key being
//! wrapped is secret, though, so the arithmetic is written not to branch on it: Montgomery
//! multiplication over fixed-size arrays of 64-bit limbs with a masked final subtraction.
//! Only the public exponent's bits steer the loop. Random octets come from aws-lc-rs.

use super::{malformed, single, tag, CmsError, Reader};

/// 64-bit limbs in every number here; moduli up to `LIMBS * 64` bits fit.
const LIMBS: usize = 32;

/// Smallest modulus this module encrypts to, in bits.
pub(crate) const MIN_MODULUS_BITS: usize = 1024;

/// Largest modulus this module encrypts to, in bits (what [`LIMBS`] holds).
pub(crate) const MAX_MODULUS_BITS: usize = LIMBS * 64;

/// Largest public exponent accepted, in octets (it must fit a u64; real keys use 65537).
const MAX_EXPONENT_OCTETS: usize = 8;

/// The padding string is at least this long (RFC 8017 §7.2.1, step 2).
const MIN_PADDING_STRING: usize = 8;

/// Octets of PKCS#1 v1.5 framing besides the padding string: 0x00, 0x02 and 0x00.
const FRAMING_OCTETS: usize = 3;

/// Random draws tried for the non-zero padding string before giving up (each draw leaves
/// out only the zero octets, about one in 256, so a second draw is already rare).
const MAX_RANDOM_DRAWS: usize = 16;

/// Newton steps for the inverse of the modulus modulo 2^64: each doubles the correct bits,
/// from 3 (an odd number is its own inverse modulo 8) to more than 64.
const INVERSE_STEPS: usize = 5;

/// A number below 2^(64·LIMBS), least significant limb first.
type Limbs = [u64; LIMBS];

/// An RSA public key (RFC 8017 §3.1) of [`MIN_MODULUS_BITS`]..=[`MAX_MODULUS_BITS`] bits, with
/// its Montgomery constants.
pub(crate) struct RsaPublicKey {
    modulus: Limbs,
    /// k, the modulus length in octets.
    modulus_len: usize,
    exponent: u64,
    /// -n⁻¹ mod 2^64.
    n0_inverse: u64,
    /// R² mod n, where R = 2^(64·LIMBS).
    r_squared: Limbs,
}

impl RsaPublicKey {
    /// Reads a DER RSAPublicKey (RFC 8017 §A.1.1). Refuses a modulus outside
    /// [`MIN_MODULUS_BITS`]..=[`MAX_MODULUS_BITS`] or an even one, and a public exponent that
    /// is even, below 3 or wider than 64 bits.
    pub(crate) fn from_der(rsa_public_key: &[u8]) -> Result<Self, CmsError> {
        const WHAT: &str = "rsa public key";
        let sequence = single(rsa_public_key, tag::SEQUENCE, WHAT)?;
        let mut fields = Reader::new(sequence.content, WHAT);
        let modulus = positive_integer(fields.take(tag::INTEGER, "modulus")?.content, "modulus")?;
        let exponent = positive_integer(
            fields.take(tag::INTEGER, "publicExponent")?.content,
            "publicExponent",
        )?;
        fields.finish()?;

        let bits = bit_length(modulus);
        if !(MIN_MODULUS_BITS..=MAX_MODULUS_BITS).contains(&bits) {
            return Err(CmsError::UnsupportedKey(format!(
                "rsa key of {bits} bits for encryption"
            )));
        }
        let modulus_limbs =
            limbs_from_be(modulus).ok_or_else(|| malformed(WHAT, "modulus too long"))?;
        if modulus_limbs.first().is_none_or(|low| low & 1 == 0) {
            return Err(malformed(WHAT, "modulus is even"));
        }

        if exponent.len() > MAX_EXPONENT_OCTETS {
            return Err(CmsError::UnsupportedKey(
                "rsa public exponent wider than 64 bits".into(),
            ));
        }
        let exponent = exponent
            .iter()
            .fold(0u64, |value, octet| (value << 8) | u64::from(*octet));
        if exponent < 3 || exponent & 1 == 0 {
            return Err(CmsError::UnsupportedKey(format!(
                "rsa public exponent {exponent}"
            )));
        }

        Ok(Self::with_modulus(modulus_limbs, modulus.len(), exponent))
    }

    /// The key with its Montgomery constants; `modulus` must be odd.
    fn with_modulus(modulus: Limbs, modulus_len: usize, exponent: u64) -> Self {
        let n0 = modulus.first().copied().unwrap_or(1);
        let mut inverse = n0;
        for _ in 0..INVERSE_STEPS {
            inverse = inverse.wrapping_mul(2u64.wrapping_sub(n0.wrapping_mul(inverse)));
        }

        // R² mod n by doubling 1 2·64·LIMBS times, reducing each time: only public values.
        let mut r_squared = one();
        for _ in 0..2 * 64 * LIMBS {
            let mut doubled = [0u64; LIMBS];
            let mut carry = 0u64;
            for (out, limb) in doubled.iter_mut().zip(r_squared.iter()) {
                *out = (limb << 1) | carry;
                carry = limb >> 63;
            }
            r_squared = subtract_if_not_below(carry, &doubled, &modulus);
        }

        Self {
            modulus,
            modulus_len,
            exponent,
            n0_inverse: inverse.wrapping_neg(),
            r_squared,
        }
    }

    /// RSAES-PKCS1-V1_5-ENCRYPT (RFC 8017 §7.2.1): `message` padded with a fresh random
    /// non-zero padding string, raised to the public exponent; k octets.
    pub(crate) fn encrypt(&self, message: &[u8]) -> Result<Vec<u8>, CmsError> {
        let encoded = pad(message, self.modulus_len)?;
        let representative = limbs_from_be(&encoded)
            .ok_or_else(|| CmsError::Encrypt("encoded message too long".into()))?;
        let ciphertext = self.power(&representative);
        Ok(limbs_to_be(&ciphertext, self.modulus_len))
    }

    /// `base`^e mod n, for `base` below n.
    fn power(&self, base: &Limbs) -> Limbs {
        let base = self.montgomery_multiply(base, &self.r_squared);
        let mut accumulator = self.montgomery_multiply(&one(), &self.r_squared);
        let exponent_bits = u64::BITS - self.exponent.leading_zeros();
        for bit in (0..exponent_bits).rev() {
            accumulator = self.montgomery_multiply(&accumulator, &accumulator);
            if (self.exponent >> bit) & 1 == 1 {
                accumulator = self.montgomery_multiply(&accumulator, &base);
            }
        }
        self.montgomery_multiply(&accumulator, &one())
    }

    /// a·b·R⁻¹ mod n for a, b below n (coarsely integrated operand scanning: multiply by one
    /// limb of b, then add the multiple of n that clears the low limb, then shift).
    fn montgomery_multiply(&self, a: &Limbs, b: &Limbs) -> Limbs {
        // t holds LIMBS limbs and two more for the carries; it stays below 2n.
        let mut low = [0u64; LIMBS];
        let mut high = 0u64;
        for b_limb in b {
            let mut carry = 0u64;
            for (t, a_limb) in low.iter_mut().zip(a.iter()) {
                let sum = u128::from(*t) + u128::from(*a_limb) * u128::from(*b_limb);
                let sum = sum + u128::from(carry);
                *t = sum as u64;
                carry = (sum >> 64) as u64;
            }
            let sum = u128::from(high) + u128::from(carry);
            high = sum as u64;
            let top = (sum >> 64) as u64;

            let factor = low
                .first()
                .copied()
                .unwrap_or(0)
                .wrapping_mul(self.n0_inverse);
            let mut carry = 0u64;
            let mut shifted = [0u64; LIMBS];
            // Limb j of t + factor·n lands in limb j - 1; limb 0 becomes zero and is dropped.
            for (j, (t, n_limb)) in low.iter().zip(self.modulus.iter()).enumerate() {
                let sum = u128::from(*t) + u128::from(factor) * u128::from(*n_limb);
                let sum = sum + u128::from(carry);
                if let Some(out) = j.checked_sub(1).and_then(|k| shifted.get_mut(k)) {
                    *out = sum as u64;
                }
                carry = (sum >> 64) as u64;
            }
            let sum = u128::from(high) + u128::from(carry);
            if let Some(last) = shifted.last_mut() {
                *last = sum as u64;
            }
            high = top + (sum >> 64) as u64;
            low = shifted;
        }
        subtract_if_not_below(high, &low, &self.modulus)
    }
}

/// The number 1.
fn one() -> Limbs {
    let mut value = [0u64; LIMBS];
    if let Some(low) = value.first_mut() {
        *low = 1;
    }
    value
}

/// (high·2^(64·LIMBS) + low) mod n for a value below 2n, without branching on it: the
/// difference is always computed and chosen by a mask.
fn subtract_if_not_below(high: u64, low: &Limbs, modulus: &Limbs) -> Limbs {
    let mut difference = [0u64; LIMBS];
    let mut borrow = 0u64;
    for ((out, a), b) in difference.iter_mut().zip(low.iter()).zip(modulus.iter()) {
        let (partial, first) = a.overflowing_sub(*b);
        let (value, second) = partial.overflowing_sub(borrow);
        *out = value;
        borrow = u64::from(first | second);
    }
    // The value is at least n when it has a high limb or the subtraction did not borrow.
    let take_difference = (high | (borrow ^ 1)) & 1;
    let mask = 0u64.wrapping_sub(take_difference);

    let mut result = [0u64; LIMBS];
    for ((out, kept), reduced) in result.iter_mut().zip(low.iter()).zip(difference.iter()) {
        *out = (reduced & mask) | (kept & !mask);
    }
    result
}

/// EME-PKCS1-v1_5 encoding (RFC 8017 §7.2.1 step 2): 0x00 0x02, at least eight random
/// non-zero octets, 0x00, the message; k octets in all.
fn pad(message: &[u8], modulus_len: usize) -> Result<Vec<u8>, CmsError> {
    let padding_len = modulus_len
        .checked_sub(message.len() + FRAMING_OCTETS)
        .filter(|len| *len >= MIN_PADDING_STRING)
        .ok_or_else(|| {
            CmsError::Encrypt(format!(
                "message of {} octets is too long for a {modulus_len}-octet rsa key",
                message.len()
            ))
        })?;

    let mut encoded = Vec::with_capacity(modulus_len);
    encoded.extend_from_slice(&[0x00, 0x02]);
    encoded.extend(nonzero_random(padding_len)?);
    encoded.push(0x00);
    encoded.extend_from_slice(message);
    Ok(encoded)
}

/// `len` random octets from aws-lc-rs, none of them zero.
fn nonzero_random(len: usize) -> Result<Vec<u8>, CmsError> {
    let mut octets = Vec::with_capacity(len);
    for _ in 0..MAX_RANDOM_DRAWS {
        let mut draw = vec![0u8; len];
        aws_lc_rs::rand::fill(&mut draw)
            .map_err(|_| CmsError::Encrypt("no random padding".into()))?;
        let missing = len - octets.len();
        octets.extend(draw.into_iter().filter(|octet| *octet != 0).take(missing));
        if octets.len() == len {
            return Ok(octets);
        }
    }
    Err(CmsError::Encrypt(
        "no non-zero random padding after several draws".into(),
    ))
}

/// The magnitude of a non-negative DER INTEGER's content octets, leading zeros removed.
fn positive_integer<'a>(content: &'a [u8], what: &str) -> Result<&'a [u8], CmsError> {
    match content.first() {
        None => Err(malformed("rsa public key", &format!("{what} is empty"))),
        Some(first) if first & 0x80 != 0 => {
            Err(malformed("rsa public key", &format!("{what} is negative")))
        }
        Some(_) => {
            let start = content
                .iter()
                .position(|octet| *octet != 0)
                .unwrap_or(content.len());
            Ok(content.get(start..).unwrap_or_default())
        }
    }
}

/// Bits in a big-endian magnitude without leading zero octets.
fn bit_length(magnitude: &[u8]) -> usize {
    match magnitude.first() {
        Some(first) => magnitude.len() * 8 - first.leading_zeros() as usize,
        None => 0,
    }
}

/// Limbs of a big-endian magnitude, or `None` if it does not fit.
fn limbs_from_be(octets: &[u8]) -> Option<Limbs> {
    let mut limbs = [0u64; LIMBS];
    for (index, octet) in octets.iter().rev().enumerate() {
        let limb = limbs.get_mut(index / 8)?;
        *limb |= u64::from(*octet) << (8 * (index % 8));
    }
    Some(limbs)
}

/// The last `len` octets of the big-endian form of `limbs`.
fn limbs_to_be(limbs: &Limbs, len: usize) -> Vec<u8> {
    let octets: Vec<u8> = limbs
        .iter()
        .rev()
        .flat_map(|limb| limb.to_be_bytes())
        .collect();
    octets
        .get(octets.len().saturating_sub(len)..)
        .unwrap_or_default()
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cms::ber;
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rsa::{KeySize, Pkcs1PrivateDecryptingKey, PrivateDecryptingKey};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn small(value: u64) -> Limbs {
        let mut limbs = [0u64; LIMBS];
        limbs[0] = value;
        limbs
    }

    /// Square and multiply over u128, for moduli below 2^63.
    fn reference_power(base: u64, exponent: u64, modulus: u64) -> u64 {
        let modulus = u128::from(modulus);
        let mut result = 1u128;
        let mut base = u128::from(base) % modulus;
        let mut exponent = exponent;
        while exponent > 0 {
            if exponent & 1 == 1 {
                result = result * base % modulus;
            }
            base = base * base % modulus;
            exponent >>= 1;
        }
        result as u64
    }

    /// DER RSAPublicKey with these big-endian modulus and exponent contents.
    fn rsa_public_key_der(modulus: &[u8], exponent: &[u8]) -> Vec<u8> {
        ber::tlv_of(
            tag::SEQUENCE,
            &[
                &ber::tlv(tag::INTEGER, modulus),
                &ber::tlv(tag::INTEGER, exponent),
            ],
        )
    }

    /// The RSAPublicKey inside aws-lc-rs's SubjectPublicKeyInfo for `key`.
    fn public_key_of(key: &PrivateDecryptingKey) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
        let spki = key.public_key().as_der()?;
        let spki = single(spki.as_ref(), tag::SEQUENCE, "spki")?;
        let (rsa_public_key, bits) = crate::cms::rsa_public_key(&spki)?;
        assert_eq!(bits, key.key_size_bits());
        Ok(rsa_public_key.to_vec())
    }

    #[test]
    fn textbook_rsa_example() {
        // n = 61 · 53, e = 17: 65^17 mod 3233 = 2790.
        let key = RsaPublicKey::with_modulus(small(3233), 2, 17);
        assert_eq!(key.power(&small(65)), small(2790));
        assert_eq!(key.power(&small(0)), small(0));
        assert_eq!(key.power(&small(1)), small(1));
    }

    #[test]
    fn power_matches_the_reference_for_many_moduli() -> TestResult {
        let mut seed = [0u8; 32 * 64];
        aws_lc_rs::rand::fill(&mut seed)?;
        for chunk in seed.chunks_exact(32) {
            let word = |at: usize| -> u64 {
                let mut octets = [0u8; 8];
                octets.copy_from_slice(&chunk[at..at + 8]);
                u64::from_be_bytes(octets)
            };
            // An odd modulus of 2 to 63 bits, a base below it, an exponent of any width.
            let modulus = ((word(0) >> (word(24) % 62)) | 3) & (u64::MAX >> 1);
            let base = word(8) % modulus;
            let exponent = word(16) | 1;
            let key = RsaPublicKey::with_modulus(small(modulus), 8, exponent);
            assert_eq!(
                key.power(&small(base)),
                small(reference_power(base, exponent, modulus)),
                "{base}^{exponent} mod {modulus}"
            );
        }
        Ok(())
    }

    #[test]
    fn aws_lc_decrypts_what_encrypt_makes_for_a_2048_bit_key() -> TestResult {
        // aws-lc-rs cannot load keys below 2048 bits, so the full-width case checks the
        // arithmetic against its private-key decryption; 1024 bits is checked by openssl in
        // the enveloped tests.
        let private = PrivateDecryptingKey::generate(KeySize::Rsa2048)?;
        let public = RsaPublicKey::from_der(&public_key_of(&private)?)?;
        assert_eq!(public.modulus_len, 256);
        let decrypting = Pkcs1PrivateDecryptingKey::new(private)?;
        for len in [0usize, 1, 16, 24, 32, 100, 256 - 11] {
            let mut message = vec![0u8; len];
            aws_lc_rs::rand::fill(&mut message)?;
            let ciphertext = public.encrypt(&message)?;
            assert_eq!(ciphertext.len(), 256);
            let mut plaintext = vec![0u8; decrypting.min_output_size()];
            let recovered = decrypting.decrypt(&ciphertext, &mut plaintext)?;
            assert_eq!(recovered, message.as_slice(), "message of {len} octets");
        }
        Ok(())
    }

    #[test]
    fn padding_has_the_rfc_8017_shape() -> TestResult {
        let message = [0xabu8; 16];
        for _ in 0..32 {
            let encoded = pad(&message, 128)?;
            assert_eq!(encoded.len(), 128);
            assert_eq!(encoded.get(..2), Some(&[0x00, 0x02][..]));
            let padding = encoded.get(2..128 - 17).ok_or("range")?;
            assert!(padding.iter().all(|octet| *octet != 0));
            assert_eq!(encoded.get(128 - 17), Some(&0x00));
            assert_eq!(encoded.get(128 - 16..), Some(&message[..]));
        }
        assert_ne!(pad(&message, 128)?, pad(&message, 128)?);

        // k - 11 octets fit (eight octets of padding), one more does not.
        assert_eq!(pad(&[1u8; 117], 128)?.len(), 128);
        assert!(matches!(pad(&[1u8; 118], 128), Err(CmsError::Encrypt(_))));
        assert!(matches!(pad(&[], 10), Err(CmsError::Encrypt(_))));
        Ok(())
    }

    #[test]
    fn keys_outside_the_range_are_refused() {
        let mut modulus_1024 = vec![0x00, 0xc0];
        modulus_1024.extend_from_slice(&[0x55; 127]);
        assert_eq!(bit_length(modulus_1024.get(1..).unwrap_or_default()), 1024);
        let key = RsaPublicKey::from_der(&rsa_public_key_der(&modulus_1024, &[1, 0, 1]));
        assert!(matches!(key, Ok(ref key) if key.modulus_len == 128));

        let mut modulus_1023 = vec![0x7f];
        modulus_1023.extend_from_slice(&[0x55; 127]);
        assert!(matches!(
            RsaPublicKey::from_der(&rsa_public_key_der(&modulus_1023, &[1, 0, 1])),
            Err(CmsError::UnsupportedKey(text)) if text.contains("1023 bits")
        ));
        let mut modulus_2056 = vec![0x00, 0x80];
        modulus_2056.extend_from_slice(&[0x55; 256]);
        assert!(matches!(
            RsaPublicKey::from_der(&rsa_public_key_der(&modulus_2056, &[1, 0, 1])),
            Err(CmsError::UnsupportedKey(text)) if text.contains("2056 bits")
        ));

        let mut even = modulus_1024.clone();
        if let Some(last) = even.last_mut() {
            *last = 0x54;
        }
        assert!(matches!(
            RsaPublicKey::from_der(&rsa_public_key_der(&even, &[1, 0, 1])),
            Err(CmsError::Malformed(text)) if text.contains("even")
        ));
        for exponent in [&[0x01][..], &[0x02], &[0x01, 0x00, 0x00], &[0x01; 9]] {
            assert!(
                matches!(
                    RsaPublicKey::from_der(&rsa_public_key_der(&modulus_1024, exponent)),
                    Err(CmsError::UnsupportedKey(_))
                ),
                "exponent {exponent:?}"
            );
        }
        let mut negative = vec![0xc0];
        negative.extend_from_slice(&[0x55; 127]);
        assert!(matches!(
            RsaPublicKey::from_der(&rsa_public_key_der(&negative, &[1, 0, 1])),
            Err(CmsError::Malformed(text)) if text.contains("negative")
        ));
        assert!(RsaPublicKey::from_der(&rsa_public_key_der(&[], &[1, 0, 1])).is_err());
        let mut trailing = rsa_public_key_der(&modulus_1024, &[1, 0, 1]);
        trailing.extend_from_slice(&[0x05, 0x00]);
        assert!(RsaPublicKey::from_der(&trailing).is_err());
        assert!(RsaPublicKey::from_der(b"\x30\x03\x02\x01").is_err());
    }

    #[test]
    fn big_endian_conversions_round_trip() {
        let octets: Vec<u8> = (1..=200u8).collect();
        let limbs = limbs_from_be(&octets).unwrap_or([0; LIMBS]);
        assert_eq!(limbs[0] & 0xff, 200);
        assert_eq!(limbs_to_be(&limbs, 200), octets);
        assert_eq!(limbs_to_be(&small(0x0102), 3), vec![0x00, 0x01, 0x02]);
        assert!(limbs_from_be(&[1u8; LIMBS * 8 + 1]).is_none());
    }
}

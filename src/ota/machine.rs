//! The enrollment state machine: which step a device may take from where it stands.
//!
//! Written by hand on purpose: four states and three events fit on one screen, and every
//! refusal has a reason an admin can read. The request path asks [`next`] before it writes a
//! device record, so an out-of-order request changes nothing.
//!
//! ```text
//!   (unknown) --phase 2--> Identified --certificate--> Certified --phase 3--> Enrolled
//!                              ^  phase 2 again (re-enrollment) from any state  |
//!                              +--------------------------------------------------+
//!   Enrolled --phase 3--> Enrolled   (a device may fetch its final profile again)
//! ```

use std::fmt;

use crate::store::DevicePhase;

/// Something that moves a device through enrollment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The device answered phase 1's challenge with an Apple-signed body.
    Phase2,
    /// The SCEP CA issued it a certificate with a challenge bound to its UDID.
    CertificateIssued,
    /// The device signed a body with that certificate and got its final profile.
    Phase3,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Event::Phase2 => "phase 2",
            Event::CertificateIssued => "certificate issuance",
            Event::Phase3 => "phase 3",
        })
    }
}

/// A step the device may not take from where it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Where the device stood (`None`: never seen).
    pub from: Option<DevicePhase>,
    /// What it tried.
    pub event: Event,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let from = match self.from {
            None => "an unknown device",
            Some(DevicePhase::Identified) => "a device without a certificate yet",
            Some(DevicePhase::Certified) => "a certified device",
            Some(DevicePhase::Enrolled) => "an enrolled device",
        };
        write!(f, "{} is out of order for {from}", self.event)
    }
}

impl std::error::Error for Refused {}

/// The state after `event`, or why the device may not take that step.
pub fn next(from: Option<DevicePhase>, event: Event) -> Result<DevicePhase, Refused> {
    use DevicePhase::*;
    match (from, event) {
        // Phase 2 (re)starts enrollment wherever the device stands: a wiped or re-enrolling
        // device proves itself again with Apple's certificate.
        (_, Event::Phase2) => Ok(Identified),
        // A SCEP challenge bound to the UDID is only handed out in phase 2 or 3, so issuance
        // follows one of those; a renewed identity keeps an enrolled device enrolled.
        (Some(Identified), Event::CertificateIssued) => Ok(Certified),
        (Some(Certified), Event::CertificateIssued) => Ok(Certified),
        (Some(Enrolled), Event::CertificateIssued) => Ok(Enrolled),
        // Phase 3 needs the certificate; an enrolled device may fetch its profile again.
        (Some(Certified), Event::Phase3) | (Some(Enrolled), Event::Phase3) => Ok(Enrolled),
        (from, event) => Err(Refused { from, event }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DevicePhase::*;

    #[test]
    fn the_happy_path() {
        let identified = next(None, Event::Phase2).unwrap();
        assert_eq!(identified, Identified);
        let certified = next(Some(identified), Event::CertificateIssued).unwrap();
        assert_eq!(certified, Certified);
        assert_eq!(next(Some(certified), Event::Phase3).unwrap(), Enrolled);
        assert_eq!(next(Some(Enrolled), Event::Phase3).unwrap(), Enrolled);
    }

    #[test]
    fn out_of_order_steps_are_refused_with_a_reason() {
        let refused = next(Some(Identified), Event::Phase3).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "phase 3 is out of order for a device without a certificate yet"
        );
        assert!(next(None, Event::Phase3).is_err());
        assert!(next(None, Event::CertificateIssued).is_err());
    }

    #[test]
    fn phase_2_restarts_from_anywhere() {
        for from in [None, Some(Identified), Some(Certified), Some(Enrolled)] {
            assert_eq!(next(from, Event::Phase2).unwrap(), Identified);
        }
    }
}

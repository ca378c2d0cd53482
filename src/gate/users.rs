//! The users file, `users.json` under the state dir: the people who may start an enrollment
//! with HTTP Basic authentication, each with an Argon2id hash of their password (a PHC
//! string). Passwords are never stored or logged in clear.
//!
//! The file is mode 0600, replaced atomically, and changed only under the state lock
//! (`otad user add|remove` while the server runs is safe). The server reads it on each login,
//! so a change takes effect at once.

use std::io::Read;
use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params};
use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError};

/// The users file, relative to the state dir.
pub const USERS_FILE: &str = "users.json";

/// The largest users file read.
pub const MAX_USERS_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Most people in the users file.
pub const MAX_USERS: usize = 10_000;

/// The longest user name.
pub const MAX_NAME_LEN: usize = 64;

/// The longest password accepted, in bytes (longer ones are refused, never cut).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// The shortest password `otad user add` accepts, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;

/// The most memory (KiB), passes and lanes a stored hash may ask for: a tampered file must
/// not make one login cost gigabytes.
const MAX_M_COST: u32 = 256 * 1024;
const MAX_T_COST: u32 = 16;
const MAX_P_COST: u32 = 8;

/// One person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The name they log in with.
    pub name: String,
    /// Argon2id PHC string of their password.
    pub hash: String,
    /// When they were added (unix seconds).
    pub created: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    users: Vec<User>,
}

/// True for a name safe in a log line and in Basic authentication: 1 to [`MAX_NAME_LEN`]
/// of `A-Z a-z 0-9 . _ @ + -`, not starting with `-`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@+-".contains(&b))
}

/// Why `name` cannot be a user name ([`valid_name`]), in words an admin can act on.
pub fn check_name(name: &str) -> Result<(), String> {
    if valid_name(name) {
        return Ok(());
    }
    Err(format!(
        "{:?}: a user name is 1 to {MAX_NAME_LEN} of A-Z a-z 0-9 . _ @ + - (not starting with -)",
        crate::logger::one_line(name, 80)
    ))
}

/// An Argon2id hash (otad's default parameters, a fresh 16-byte salt) of `password`.
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    aws_lc_rs::rand::fill(&mut salt).map_err(|_| "no random salt available".to_string())?;
    let salt = SaltString::encode_b64(&salt).map_err(|err| format!("salt: {err}"))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|err| format!("hashing the password: {err}"))
}

/// Checks `password` against a stored PHC string. `Err` when the string is not an Argon2id
/// hash otad accepts (an admin must fix the file); `Ok(false)` for a wrong password.
pub fn verify_password(hash: &str, password: &str) -> Result<bool, String> {
    let parsed = PasswordHash::new(hash).map_err(|err| format!("not a PHC string: {err}"))?;
    if parsed.algorithm != Algorithm::Argon2id.ident() {
        return Err(format!(
            "algorithm {}: only argon2id is accepted",
            parsed.algorithm
        ));
    }
    let params = Params::try_from(&parsed).map_err(|err| format!("parameters: {err}"))?;
    if params.m_cost() > MAX_M_COST || params.t_cost() > MAX_T_COST || params.p_cost() > MAX_P_COST
    {
        return Err(format!(
            "parameters m={} t={} p={}: over m={MAX_M_COST} t={MAX_T_COST} p={MAX_P_COST}",
            params.m_cost(),
            params.t_cost(),
            params.p_cost()
        ));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Ok(false);
    }
    Ok(Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok())
}

/// A hash of nobody's password, verified against for unknown names so that a login for a
/// name that does not exist takes as long as one for a name that does.
fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| {
        let mut bytes = [0u8; 24];
        let _ = aws_lc_rs::rand::fill(&mut bytes);
        let password: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        hash_password(&password).unwrap_or_default()
    })
}

/// Reads the users file; none yet means nobody. Only a regular file is read: a FIFO there
/// would block every login (and `otad fsck`) for good, and a symlink could lead out of the
/// state dir.
pub fn load(store: &Store) -> Result<Vec<User>, StoreError> {
    let path = store.path(USERS_FILE);
    let file = match crate::store::fsutil::open_regular(&path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(StoreError::Io { path, source }),
    };
    let mut bytes = Vec::new();
    file.take(MAX_USERS_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })?;
    let corrupt = |reason: String| StoreError::Corrupt {
        path: path.clone(),
        reason,
    };
    if bytes.len() as u64 > MAX_USERS_FILE_BYTES {
        return Err(corrupt(format!("over {MAX_USERS_FILE_BYTES} bytes")));
    }
    let parsed: UsersFile =
        serde_json::from_slice(&bytes).map_err(|err| corrupt(err.to_string()))?;
    if parsed.users.len() > MAX_USERS {
        return Err(corrupt(format!("more than {MAX_USERS} users")));
    }
    Ok(parsed.users)
}

fn save(store: &Store, users: Vec<User>) -> Result<(), StoreError> {
    let mut bytes = serde_json::to_vec_pretty(&UsersFile { users }).unwrap_or_default();
    bytes.push(b'\n');
    store.write_file(USERS_FILE, &bytes, 0o600)
}

/// Why a users-file change was refused.
#[derive(Debug)]
pub enum UsersError {
    /// The state dir failed.
    Store(StoreError),
    /// The change makes no sense (a bad name, a short password, a duplicate); the text says
    /// what to do.
    Refused(String),
}

impl std::fmt::Display for UsersError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UsersError::Store(err) => write!(f, "{err}"),
            UsersError::Refused(why) => f.write_str(why),
        }
    }
}

impl From<StoreError> for UsersError {
    fn from(err: StoreError) -> Self {
        UsersError::Store(err)
    }
}

/// Checks a new password's length.
pub fn check_new_password(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(format!(
            "the password must be at least {MIN_PASSWORD_CHARS} characters"
        ));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(format!(
            "the password must be at most {MAX_PASSWORD_BYTES} bytes"
        ));
    }
    Ok(())
}

/// Adds `name` with `password` (hashed here), or replaces their password when `replace`.
pub fn add(
    store: &Store,
    name: &str,
    password: &str,
    replace: bool,
    now: i64,
) -> Result<(), UsersError> {
    check_name(name).map_err(UsersError::Refused)?;
    check_new_password(password).map_err(UsersError::Refused)?;
    let hash = hash_password(password).map_err(UsersError::Refused)?;

    store.transaction(|| {
        let mut users = load(store)?;
        let user = User {
            name: name.to_string(),
            hash,
            created: now,
        };
        let count = users.len();
        match users.iter_mut().find(|u| u.name == name) {
            Some(existing) if replace => *existing = user,
            Some(_) => {
                return Err(UsersError::Refused(format!(
                    "user {name}: already exists (--replace sets a new password)"
                )))
            }
            None if count >= MAX_USERS => {
                return Err(UsersError::Refused(format!(
                    "the users file already holds {MAX_USERS} users"
                )))
            }
            None => users.push(user),
        }
        save(store, users)?;
        Ok(())
    })
}

/// Removes `name`; `false` when there was no such user.
pub fn remove(store: &Store, name: &str) -> Result<bool, UsersError> {
    store.transaction(|| {
        let mut users = load(store)?;
        let before = users.len();
        users.retain(|u| u.name != name);
        if users.len() == before {
            return Ok(false);
        }
        save(store, users)?;
        Ok(true)
    })
}

/// Checks a login against the users file: `Ok(true)` only for a known name with the right
/// password. `Err` when the file or the user's stored hash is broken (logged by the caller;
/// the login is refused).
pub fn authenticate(store: &Store, name: &str, password: &str) -> Result<bool, String> {
    let users = load(store).map_err(|err| err.to_string())?;
    match users.iter().find(|u| u.name == name) {
        Some(user) => verify_password(&user.hash, password)
            .map_err(|err| format!("{}: user {name}: {err}", USERS_FILE)),
        None => {
            let _ = verify_password(decoy_hash(), password);
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        Store::temporary()
    }

    #[test]
    fn hashes_are_argon2id_and_verify() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
        assert_eq!(verify_password(&hash, "correct horse"), Ok(true));
        assert_eq!(verify_password(&hash, "correct hors"), Ok(false));
        assert_ne!(hash, hash_password("correct horse").unwrap(), "fresh salt");
    }

    #[test]
    fn bad_hashes_are_errors_not_logins() {
        assert!(verify_password("plaintext", "plaintext").is_err());
        assert!(verify_password("", "").is_err());
        let argon2i = "$argon2i$v=19$m=16,t=2,p=1$c29tZXNhbHQ$ZkFZmTLyk3jgBOGgUNmRXQ";
        assert!(verify_password(argon2i, "x")
            .unwrap_err()
            .contains("argon2id"));
        let greedy = "$argon2id$v=19$m=4194304,t=1,p=1$c29tZXNhbHQ$ZkFZmTLyk3jgBOGgUNmRXQ";
        assert!(verify_password(greedy, "x").unwrap_err().contains("over"));
    }

    #[test]
    fn add_remove_and_authenticate() {
        let (_dir, store) = store();
        assert_eq!(authenticate(&store, "alice", "whatever1"), Ok(false));
        add(&store, "alice", "s3cret-pass", false, 10).unwrap();
        add(&store, "bob@example.com", "another-pass", false, 11).unwrap();
        assert_eq!(authenticate(&store, "alice", "s3cret-pass"), Ok(true));
        assert_eq!(authenticate(&store, "alice", "another-pass"), Ok(false));
        assert_eq!(authenticate(&store, "carol", "s3cret-pass"), Ok(false));

        let err = add(&store, "alice", "newer-pass", false, 12).unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        add(&store, "alice", "newer-pass", true, 12).unwrap();
        assert_eq!(authenticate(&store, "alice", "newer-pass"), Ok(true));

        // The file is private and holds no password in clear.
        use std::os::unix::fs::PermissionsExt;
        let path = store.path(USERS_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("newer-pass") && !text.contains("another-pass"));

        assert!(remove(&store, "alice").unwrap());
        assert!(!remove(&store, "alice").unwrap());
        let names: Vec<String> = load(&store).unwrap().into_iter().map(|u| u.name).collect();
        assert_eq!(names, ["bob@example.com"]);
    }

    #[test]
    fn names_and_passwords_are_checked() {
        let (_dir, store) = store();
        for bad in ["", "-x", "a:b", "a b", "ä", &"a".repeat(65), "x\ny"] {
            assert!(
                matches!(
                    add(&store, bad, "long-enough", false, 1),
                    Err(UsersError::Refused(_))
                ),
                "{bad:?}"
            );
        }
        assert!(add(&store, "short", "1234567", false, 1).is_err());
        assert!(add(&store, "long", &"x".repeat(1025), false, 1).is_err());
    }

    #[test]
    fn a_broken_entry_refuses_with_an_error() {
        let (_dir, store) = store();
        let text = r#"{"users":[{"name":"eve","hash":"not-a-hash","created":1}]}"#;
        store
            .write_file(USERS_FILE, text.as_bytes(), 0o600)
            .unwrap();
        let err = authenticate(&store, "eve", "not-a-hash").unwrap_err();
        assert!(err.contains("user eve"), "{err}");
        store.write_file(USERS_FILE, b"{", 0o600).unwrap();
        assert!(authenticate(&store, "eve", "x").is_err());
    }

    #[test]
    fn a_users_file_that_is_not_a_regular_file_is_refused_at_once() {
        let (_dir, store) = store();
        let path = store.path(USERS_FILE);
        // A FIFO: opening it to read would wait for a writer for good.
        let name = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo(3) with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        let (sender, receiver) = std::sync::mpsc::channel();
        let root = store.root().to_path_buf();
        std::thread::spawn(move || {
            let store = Store::open(&root).unwrap();
            let _ = sender.send(load(&store).map_err(|err| err.to_string()));
        });
        let loaded = receiver
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("load returns instead of blocking on a FIFO");
        assert!(loaded.unwrap_err().contains("not a regular file"));
        assert!(authenticate(&store, "alice", "whatever1").is_err());

        // A symlink is not followed.
        std::fs::remove_file(&path).unwrap();
        let elsewhere = store.path("elsewhere.json");
        std::fs::write(&elsewhere, br#"{"users":[]}"#).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        assert!(load(&store).is_err());
    }

    #[test]
    fn the_users_file_is_read_up_to_its_size_and_count() {
        let (_dir, store) = store();
        let sized = |len: u64| {
            let mut text = br#"{"users":[]}"#.to_vec();
            text.resize(usize::try_from(len).unwrap(), b' ');
            text
        };
        store
            .write_file(USERS_FILE, &sized(MAX_USERS_FILE_BYTES), 0o600)
            .unwrap();
        assert_eq!(load(&store).unwrap().len(), 0);
        store
            .write_file(USERS_FILE, &sized(MAX_USERS_FILE_BYTES + 1), 0o600)
            .unwrap();
        let err = load(&store).unwrap_err().to_string();
        assert!(
            err.contains(&format!("over {MAX_USERS_FILE_BYTES} bytes")),
            "{err}"
        );

        let counted = |n: usize| {
            let users: Vec<String> = (0..n)
                .map(|i| format!(r#"{{"name":"u{i}","hash":"h","created":1}}"#))
                .collect();
            format!(r#"{{"users":[{}]}}"#, users.join(","))
        };
        store
            .write_file(USERS_FILE, counted(MAX_USERS).as_bytes(), 0o600)
            .unwrap();
        assert_eq!(load(&store).unwrap().len(), MAX_USERS);
        store
            .write_file(USERS_FILE, counted(MAX_USERS + 1).as_bytes(), 0o600)
            .unwrap();
        let err = load(&store).unwrap_err().to_string();
        assert!(
            err.contains(&format!("more than {MAX_USERS} users")),
            "{err}"
        );
    }
}

//! Logging in from the CLI (`--user`, with the password from `TESSERA_PASSWORD` or
//! `--password-file`, never a flag of its own: a command line is visible to every user of the
//! host) and `tessera admin hash-password`, which makes the users file's argon2id hashes.

use std::io::Read;
use std::path::Path;

use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::Argon2;
use tessera_client::{ClientError, Credentials};

/// The CLI's credentials: none without `--user`.
pub fn credentials(
    user: Option<&str>,
    password: Option<&str>,
    password_file: Option<&Path>,
) -> Result<Option<Credentials>, ClientError> {
    let Some(user) = user else {
        return Ok(None);
    };
    let password = match (password, password_file) {
        (Some(password), _) => password.to_string(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| ClientError::Io(format!("cannot read {}: {e}", path.display())))?
            .trim_end_matches(['\n', '\r'])
            .to_string(),
        (None, None) => {
            return Err(ClientError::Io(format!(
                "--user {user} needs a password: set TESSERA_PASSWORD or give --password-file"
            )))
        }
    };
    Ok(Some(Credentials {
        user: user.to_string(),
        password,
    }))
}

/// An argon2id PHC string of the password on standard input (its first line), with a fresh
/// 16-byte salt from the kernel and argon2's default costs (19 MiB, 2 passes: OWASP's).
pub fn hash_password() -> Result<String, ClientError> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| ClientError::Io(format!("cannot read the password: {e}")))?;
    let password = input.lines().next().unwrap_or_default();
    if password.is_empty() {
        return Err(ClientError::Io(
            "no password on standard input (echo -n 'secret' | tessera admin hash-password)".into(),
        ));
    }
    let mut salt = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut salt))
        .map_err(|e| ClientError::Io(format!("cannot read /dev/urandom: {e}")))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| ClientError::Io(e.to_string()))?;
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| ClientError::Io(format!("argon2: {e}")))?;
    Ok(hash.to_string())
}

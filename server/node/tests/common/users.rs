//! Users files for tests (included with `#[path]` by the tests that need it: the load
//! generator's tests share `common` and do not link argon2).

/// An argon2id hash for a users file, with small costs: the node checks whatever costs a hash
/// names, and tests are about the logic (`tessera admin hash-password` makes real ones).
pub fn cheap_hash(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::from_b64("dGVzdHNhbHR0ZXN0c2FsdA").unwrap();
    let params = argon2::Params::new(1024, 1, 1, None).unwrap();
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

//! Users and what each may do (`--users FILE`), as Redis ACLs and Aerospike roles do it.
//!
//! The file is TOML, one `[[user]]` table per user:
//!
//! ```toml
//! [[user]]
//! name = "app"
//! # argon2id, PHC string: `tessera admin hash-password` makes one. Never the password itself.
//! password = "$argon2id$v=19$m=19456,t=2,p=1$..."
//! # Optional: a client certificate (signed by --tls-client-ca) naming this DNS name logs in
//! # as this user without AUTH.
//! certificate = "app.clients"
//! read = ["app:"]     # key prefixes this user may read ("" or "*": every key)
//! write = ["app:"]    # ... and write (PUT, DELETE)
//! route = true        # may ask for the TOPOLOGY (cluster-aware clients need it)
//! admin = false       # STATS, VERIFY, TOPOLOGY and the admin commands
//! ```
//!
//! Choices: `admin` is about operations, not keys: an operator who also reads data says so
//! with `read`. TOPOLOGY needs `admin`, or `route` for the clients that route by it. A user has
//! a password, a certificate name, or both. A file that cannot be read, has an unknown key, a
//! hash that is not a PHC string, or two users of one name stops startup (and a SIGHUP keeps
//! the users in use), naming the file and the user.
//!
//! Logins already checked: argon2 costs ~20 ms of a core by design, and a client pool opens a
//! connection per shard port. After a password passes argon2, the node keeps a keyed BLAKE2b
//! of it (its key random per process, never on disk) per user, and an AUTH with the same
//! password is known by that alone, in microseconds. A SIGHUP forgets them all. What this
//! costs: someone who can read the node's memory could test guesses against it fast; such a
//! reader sees the passwords arriving and every value anyway.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use blake2::digest::{KeyInit, Mac};
use blake2::Blake2bMac512;
use rustls::pki_types::{CertificateDer, ServerName};

/// Key prefixes a user may read or write; `all` when one of them is empty (or `*`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Prefixes {
    all: bool,
    prefixes: Vec<Vec<u8>>,
}

impl Prefixes {
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Prefixes {
        let mut out = Prefixes::default();
        for pattern in patterns {
            match pattern.as_ref() {
                "" | "*" => out.all = true,
                prefix => out.prefixes.push(prefix.as_bytes().to_vec()),
            }
        }
        out
    }

    pub fn allows(&self, key: &[u8]) -> bool {
        self.all || self.prefixes.iter().any(|p| key.starts_with(p))
    }

    /// How much of a scan of keys starting with `prefix` these prefixes allow.
    pub fn scan_reach(&self, prefix: &[u8]) -> ScanReach {
        if self.allows(prefix) {
            ScanReach::Whole
        } else if self.prefixes.iter().any(|p| p.starts_with(prefix)) {
            ScanReach::Part
        } else {
            ScanReach::None
        }
    }
}

/// How much of a SCAN a user may see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanReach {
    /// Every key the scan can list.
    Whole,
    /// Some keys: the answer is filtered key by key.
    Part,
    /// No key the scan can list.
    None,
}

/// One user of the file.
#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    /// The argon2 PHC string; `None`: this user logs in by certificate only.
    password: Option<String>,
    /// A DNS name that a client certificate names to log in as this user.
    certificate: Option<String>,
    pub read: Prefixes,
    pub write: Prefixes,
    pub route: bool,
    pub admin: bool,
}

/// The users of one reading of the file.
#[derive(Debug, Default)]
pub struct UserTable {
    users: Vec<Arc<User>>,
}

impl UserTable {
    pub fn find(&self, name: &str) -> Option<&Arc<User>> {
        self.users.iter().find(|u| u.name == name)
    }

    /// The user a client certificate (already verified against --tls-client-ca) names.
    pub fn by_certificate(&self, cert: &CertificateDer<'_>) -> Option<&Arc<User>> {
        let cert = webpki::EndEntityCert::try_from(cert).ok()?;
        self.users.iter().find(|user| {
            let Some(name) = user.certificate.as_deref() else {
                return false;
            };
            let Ok(name) = ServerName::try_from(name) else {
                return false;
            };
            cert.verify_is_valid_for_subject_name(&name).is_ok()
        })
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }
}

/// Parses a users file's text; errors name the user and the key.
pub fn parse(text: &str) -> Result<UserTable, String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        e.to_string().lines().next().unwrap_or_default().to_string()
    })?;
    let mut users: Vec<Arc<User>> = Vec::new();
    for (key, value) in &table {
        let toml::Value::Array(entries) = value else {
            return Err(format!("unknown key `{key}` (users are `[[user]]` tables)"));
        };
        if key != "user" {
            return Err(format!("unknown key `{key}` (users are `[[user]]` tables)"));
        }
        for (index, entry) in entries.iter().enumerate() {
            let toml::Value::Table(entry) = entry else {
                return Err(format!("user #{}: not a table", index + 1));
            };
            let user = parse_user(entry).map_err(|why| {
                let name = entry.get("name").and_then(|n| n.as_str());
                format!("user {}: {why}", name.unwrap_or(&format!("#{}", index + 1)))
            })?;
            if users.iter().any(|u| u.name == user.name) {
                return Err(format!("user {}: named twice", user.name));
            }
            users.push(Arc::new(user));
        }
    }
    Ok(UserTable { users })
}

fn parse_user(entry: &toml::Table) -> Result<User, String> {
    const KEYS: [&str; 7] = [
        "name",
        "password",
        "certificate",
        "read",
        "write",
        "route",
        "admin",
    ];
    if let Some(key) = entry.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(format!("unknown key `{key}` (keys: {})", KEYS.join(", ")));
    }
    let text = |key: &str| -> Result<Option<String>, String> {
        match entry.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("`{key}` is a string")),
        }
    };
    let flag = |key: &str| -> Result<bool, String> {
        match entry.get(key) {
            None => Ok(false),
            Some(toml::Value::Boolean(b)) => Ok(*b),
            Some(_) => Err(format!("`{key}` is true or false")),
        }
    };
    let prefixes = |key: &str| -> Result<Prefixes, String> {
        let Some(value) = entry.get(key) else {
            return Ok(Prefixes::default());
        };
        let items = value
            .as_array()
            .ok_or_else(|| format!("`{key}` is a list of key prefixes"))?;
        let strings: Option<Vec<&str>> = items.iter().map(|v| v.as_str()).collect();
        let strings = strings.ok_or_else(|| format!("`{key}` is a list of strings"))?;
        Ok(Prefixes::new(&strings))
    };
    let name = text("name")?.ok_or("no `name`")?;
    if name.is_empty() {
        return Err("an empty `name`".into());
    }
    let password = text("password")?;
    if let Some(hash) = &password {
        check_hash(hash)?;
    }
    let certificate = text("certificate")?;
    if let Some(dns) = &certificate {
        ServerName::try_from(dns.as_str())
            .map_err(|_| format!("`certificate` {dns:?} is not a DNS name"))?;
    }
    if password.is_none() && certificate.is_none() {
        return Err("neither `password` nor `certificate`: nobody could log in as it".into());
    }
    Ok(User {
        name,
        password,
        certificate,
        read: prefixes("read")?,
        write: prefixes("write")?,
        route: flag("route")?,
        admin: flag("admin")?,
    })
}

/// A PHC string of argon2 (argon2id, argon2i or argon2d), never a password in clear.
fn check_hash(hash: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(hash).map_err(|_| {
        "`password` is not a PHC hash string (`tessera admin hash-password` makes one; the file \
         never holds a password itself)"
            .to_string()
    })?;
    if !parsed.algorithm.as_str().starts_with("argon2") || parsed.hash.is_none() {
        return Err(format!(
            "`password` is a {} hash; the node takes argon2 only",
            parsed.algorithm
        ));
    }
    Ok(())
}

/// Why an AUTH failed (the metric's reason; the client hears only "bad user or password").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    UnknownUser,
    BadPassword,
}

impl AuthFailure {
    pub fn reason(self) -> &'static str {
        match self {
            AuthFailure::UnknownUser => "unknown_user",
            AuthFailure::BadPassword => "bad_password",
        }
    }
}

/// A password to check and the hash to check it against: slow by design (argon2), so it runs
/// off the shard's core (login.rs hands it to the executor's blocking thread).
pub struct Check {
    user: Option<Arc<User>>,
    password: String,
    /// Checked for an unknown user too, so that the time taken does not tell which users
    /// exist.
    decoy: Arc<str>,
    /// The password's seal, kept once argon2 passes it.
    seal: Vec<u8>,
}

/// A login argon2 passed, and the seal to remember it by.
pub struct Verified {
    pub user: Arc<User>,
    seal: Vec<u8>,
}

/// What an AUTH needs: nothing more (the password is remembered), or argon2.
pub enum Attempt {
    Remembered(Arc<User>),
    Check(Check),
}

impl Check {
    /// Runs argon2: the user on success.
    pub fn run(self) -> Result<Verified, AuthFailure> {
        let hash = match self.user.as_ref().and_then(|u| u.password.as_deref()) {
            Some(hash) => hash,
            None => &self.decoy,
        };
        let good = PasswordHash::new(hash)
            .map(|hash| {
                Argon2::default()
                    .verify_password(self.password.as_bytes(), &hash)
                    .is_ok()
            })
            .unwrap_or(false);
        match (self.user, good) {
            (Some(user), true) if user.password.is_some() => Ok(Verified {
                user,
                seal: self.seal,
            }),
            (Some(_), _) => Err(AuthFailure::BadPassword),
            (None, _) => Err(AuthFailure::UnknownUser),
        }
    }
}

/// The node's users: the file's current reading, replaced whole on SIGHUP. Connections hold
/// their user by name and look it up again when `generation` moves, so a user removed from the
/// file, or given fewer rights, is held to it from the next request.
pub struct Users {
    path: PathBuf,
    table: RwLock<Arc<UserTable>>,
    generation: AtomicU64,
    decoy: Arc<str>,
    /// The key of the seals (random per process).
    seal_key: [u8; 32],
    /// Per user, the seal of the password argon2 last passed (this reading of the file).
    remembered: Mutex<HashMap<String, Vec<u8>>>,
}

impl Users {
    pub fn load(path: &Path) -> Result<Users, String> {
        let table = read(path)?;
        // A fixed salt is fine for the decoy: it guards no password.
        let salt = SaltString::from_b64("dGVzc2VyYWRlY295c2FsdA").expect("a valid salt");
        let decoy = Argon2::default()
            .hash_password(b"decoy", &salt)
            .map_err(|e| format!("argon2: {e}"))?
            .to_string();
        let mut seal_key = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut random| random.read_exact(&mut seal_key))
            .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
        Ok(Users {
            path: path.to_path_buf(),
            table: RwLock::new(Arc::new(table)),
            generation: AtomicU64::new(1),
            decoy: decoy.into(),
            seal_key,
            remembered: Mutex::new(HashMap::new()),
        })
    }

    fn seal(&self, user: &str, password: &str) -> Blake2bMac512 {
        let mut mac =
            <Blake2bMac512 as KeyInit>::new_from_slice(&self.seal_key).expect("a 32-byte key");
        mac.update(user.as_bytes());
        mac.update(&[0]);
        mac.update(password.as_bytes());
        mac
    }

    /// Keeps a login argon2 passed, unless the file was read again since `generation`.
    pub fn remember(&self, verified: Verified, generation: u64) -> Arc<User> {
        let mut remembered = self.remembered.lock().expect("remembered logins lock");
        if self.generation() == generation {
            remembered.insert(verified.user.name.clone(), verified.seal);
        }
        verified.user
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file again; on an error the users in use stay. The count of users on success.
    pub fn reload(&self) -> Result<usize, String> {
        let table = read(&self.path)?;
        let count = table.len();
        let mut remembered = self.remembered.lock().expect("remembered logins lock");
        *self.table.write().expect("users lock") = Arc::new(table);
        self.generation.fetch_add(1, Ordering::SeqCst);
        remembered.clear();
        Ok(count)
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    pub fn current(&self) -> Arc<UserTable> {
        self.table.read().expect("users lock").clone()
    }

    /// What logging in as `user` with `password` takes: the user, when this password passed
    /// argon2 before; otherwise the check to run off the shard's core.
    pub fn attempt(&self, user: &str, password: String) -> Attempt {
        let found = self.current().find(user).cloned();
        let seal = self.seal(user, &password);
        if let Some(found) = &found {
            let remembered = self.remembered.lock().expect("remembered logins lock");
            let known = remembered
                .get(user)
                .map(|tag| seal.clone().verify_slice(tag));
            if let Some(Ok(())) = known {
                return Attempt::Remembered(found.clone());
            }
        }
        Attempt::Check(Check {
            user: found,
            password,
            decoy: self.decoy.clone(),
            seal: seal.finalize().into_bytes().to_vec(),
        })
    }
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Users").field("path", &self.path).finish()
    }
}

fn read(path: &Path) -> Result<UserTable, String> {
    let file = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the users file {file}: {e}"))?;
    let table = parse(&text).map_err(|why| format!("users file {file}: {why}"))?;
    if table.len() == 0 {
        return Err(format!(
            "users file {file} names no user: nobody could connect"
        ));
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(password: &str) -> String {
        let salt = SaltString::from_b64("c29tZXNhbHRzb21lc2FsdA").unwrap();
        // Small costs: these tests check the logic, not argon2.
        let params = argon2::Params::new(256, 1, 1, None).unwrap();
        Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password(password.as_bytes(), &salt)
            .unwrap()
            .to_string()
    }

    fn table(users: &str) -> Result<UserTable, String> {
        parse(users)
    }

    #[test]
    fn prefixes_allow_keys_and_scans() {
        let app = Prefixes::new(&["app:", "shared:x"]);
        assert!(app.allows(b"app:1"));
        assert!(!app.allows(b"ap"));
        assert!(!app.allows(b"other"));
        assert_eq!(app.scan_reach(b"app:users:"), ScanReach::Whole);
        assert_eq!(app.scan_reach(b"app"), ScanReach::Part);
        assert_eq!(app.scan_reach(b""), ScanReach::Part);
        assert_eq!(app.scan_reach(b"other"), ScanReach::None);
        let all = Prefixes::new(&["*"]);
        assert!(all.allows(b""));
        assert_eq!(all.scan_reach(b""), ScanReach::Whole);
        let none = Prefixes::default();
        assert!(!none.allows(b"app:1"));
        assert_eq!(none.scan_reach(b""), ScanReach::None);
    }

    #[test]
    fn a_file_parses_into_users() {
        let text = format!(
            "[[user]]\nname = \"app\"\npassword = \"{}\"\nread = [\"app:\"]\nwrite = [\"app:\"]\n\
             route = true\n\n[[user]]\nname = \"ops\"\ncertificate = \"ops.clients\"\n\
             admin = true\nread = [\"\"]\n",
            hash("pw")
        );
        let users = table(&text).unwrap();
        assert_eq!(users.len(), 2);
        let app = users.find("app").unwrap();
        assert!(app.route && !app.admin);
        assert!(app.write.allows(b"app:1") && !app.write.allows(b"x"));
        let ops = users.find("ops").unwrap();
        assert!(ops.admin && ops.read.allows(b"anything") && !ops.write.allows(b"x"));
    }

    #[test]
    fn bad_files_say_which_user_and_key() {
        let cases = [
            ("[[user]]\nname = \"a\"\npassword = \"hunter2\"\n", "not a PHC"),
            ("[[user]]\nname = \"a\"\n", "neither"),
            ("[[user]]\npassword = \"x\"\n", "no `name`"),
            ("[[user]]\nname = \"a\"\ncertificate = \"a\"\nwrites = []\n", "unknown key"),
            ("[[user]]\nname = \"a\"\ncertificate = \"a\"\nread = \"app:\"\n", "list"),
            ("[[user]]\nname = \"a\"\ncertificate = \"a\"\nadmin = 1\n", "true or false"),
            ("users = 1\n", "unknown key `users`"),
            ("[[user]]\nname = \"a\"\ncertificate = \"a b\"\n", "not a DNS name"),
            (
                "[[user]]\nname = \"a\"\ncertificate = \"a\"\n[[user]]\nname = \"a\"\ncertificate = \"b\"\n",
                "named twice",
            ),
        ];
        for (text, want) in cases {
            let error = table(text).unwrap_err();
            assert!(error.contains(want), "{text:?}: {error}");
        }
        let sha = "$pbkdf2-sha256$i=1000$c29tZXNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";
        let error = table(&format!("[[user]]\nname = \"a\"\npassword = \"{sha}\"\n")).unwrap_err();
        assert!(error.contains("argon2 only"), "{error}");
    }

    #[test]
    fn a_password_that_passed_is_known_again_until_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let text = format!(
            "[[user]]\nname = \"app\"\npassword = \"{}\"\n",
            hash("right")
        );
        std::fs::write(&path, text).unwrap();
        let users = Users::load(&path).unwrap();
        let attempt = |password: &str| users.attempt("app", password.into());
        let Attempt::Check(check) = attempt("right") else {
            panic!("remembered before any login")
        };
        let generation = users.generation();
        let verified = check.run().ok().unwrap();
        users.remember(verified, generation);
        assert!(matches!(attempt("right"), Attempt::Remembered(_)));
        let Attempt::Check(wrong) = attempt("wrong") else {
            panic!("a wrong password was taken for a remembered one")
        };
        assert!(wrong.run().is_err());
        assert!(matches!(
            users.attempt("nobody", "right".into()),
            Attempt::Check(_)
        ));
        users.reload().unwrap();
        assert!(
            matches!(attempt("right"), Attempt::Check(_)),
            "kept past a reload"
        );
        // A check that began before the reload is not remembered after it.
        let Attempt::Check(check) = attempt("right") else {
            unreachable!()
        };
        let verified = check.run().ok().unwrap();
        users.remember(verified, generation);
        assert!(matches!(attempt("right"), Attempt::Check(_)));
    }

    #[test]
    fn passwords_are_checked_against_the_hash() {
        let text = format!(
            "[[user]]\nname = \"app\"\npassword = \"{}\"\n[[user]]\nname = \"cert\"\n\
             certificate = \"cert\"\n",
            hash("right")
        );
        let users = Arc::new(table(&text).unwrap());
        let decoy: Arc<str> = hash("decoy").into();
        let check = |user: &str, password: &str| {
            Check {
                user: users.find(user).cloned(),
                password: password.into(),
                decoy: decoy.clone(),
                seal: Vec::new(),
            }
            .run()
            .map(|v| v.user.name.clone())
        };
        assert_eq!(check("app", "right"), Ok("app".to_string()));
        assert_eq!(check("app", "wrong"), Err(AuthFailure::BadPassword));
        assert_eq!(check("nobody", "decoy"), Err(AuthFailure::UnknownUser));
        // A certificate-only user has no password to guess.
        assert_eq!(check("cert", "decoy"), Err(AuthFailure::BadPassword));
    }
}

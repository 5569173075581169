//! The sequential specification: one key of the store as a versioned register.
//!
//! The state is the key's value and version, or absent. A version is known once some answer
//! named it (the PUT's own acknowledgement, a GET, a VERSION_MISMATCH); a PUT whose outcome is
//! unknown leaves its version unknown until an answer names it, and the search then fills it
//! in. Versions only grow: a PUT's new version is above the version it replaced.

/// What a client asked.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Call {
    Get,
    Put {
        value: Vec<u8>,
        /// Compare-and-set: the current version must be this (0 = the key must be absent).
        if_version: Option<u64>,
    },
    Delete {
        if_version: Option<u64>,
    },
}

/// What the client was told.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// GET: the value and its version.
    Found { value: Vec<u8>, version: u64 },
    /// GET of an absent key, or DELETE of one.
    NotFound,
    /// PUT acknowledged with its new version.
    Written { version: u64 },
    /// DELETE acknowledged.
    Deleted,
    /// Compare-and-set refused; the key's version was `current` (0 = absent).
    VersionMismatch { current: u64 },
    /// A PUT or DELETE whose outcome the client never learned: it took effect or it did not.
    Unknown,
}

/// A key's state: absent, or its value and version (`None` while no answer has named it).
pub type State = Option<(Vec<u8>, Option<u64>)>;

/// `known` agrees with the version an answer named.
fn agrees(known: Option<u64>, named: u64) -> bool {
    known.is_none_or(|known| known == named)
}

/// The version of `state` as compare-and-set sees it, checked against `expected`.
fn compare_holds(state: &State, expected: Option<u64>) -> bool {
    match (expected, state) {
        (None, _) => true,
        (Some(0), state) => state.is_none(),
        (Some(_), None) => false,
        (Some(expected), Some((_, version))) => agrees(*version, expected),
    }
}

/// Every state the call can leave when it gave this outcome from `state` (empty: impossible).
pub fn step(state: &State, call: &Call, outcome: &Outcome) -> Vec<State> {
    match (call, outcome) {
        (Call::Get, Outcome::Found { value, version }) => match state {
            Some((v, known)) if v == value && agrees(*known, *version) => {
                vec![Some((value.clone(), Some(*version)))]
            }
            _ => vec![],
        },
        (Call::Get, Outcome::NotFound) => match state {
            None => vec![None],
            Some(_) => vec![],
        },
        (Call::Put { value, if_version }, Outcome::Written { version }) => {
            let grows = match state {
                Some((_, Some(old))) => version > old,
                _ => true,
            };
            match compare_holds(state, *if_version) && grows {
                true => vec![Some((value.clone(), Some(*version)))],
                false => vec![],
            }
        }
        (Call::Put { value, if_version }, Outcome::Unknown) => {
            let mut next = vec![state.clone()];
            if compare_holds(state, *if_version) {
                next.push(Some((value.clone(), None)));
            }
            next
        }
        (Call::Delete { if_version }, Outcome::Deleted) => {
            match state.is_some() && compare_holds(state, *if_version) {
                true => vec![None],
                false => vec![],
            }
        }
        (Call::Delete { if_version }, Outcome::NotFound) => {
            // The server checks the version first: an absent key against a non-zero expected
            // version is a VERSION_MISMATCH, not a NOT_FOUND.
            match state.is_none() && if_version.is_none_or(|v| v == 0) {
                true => vec![None],
                false => vec![],
            }
        }
        (Call::Delete { if_version }, Outcome::Unknown) => {
            let mut next = vec![state.clone()];
            if state.is_some() && compare_holds(state, *if_version) {
                next.push(None);
            }
            next
        }
        (
            Call::Put { if_version, .. } | Call::Delete { if_version },
            Outcome::VersionMismatch { current },
        ) => mismatch(state, *if_version, *current),
        _ => vec![],
    }
}

/// A refused compare-and-set: the state's version was `current`, and not the one expected.
fn mismatch(state: &State, expected: Option<u64>, current: u64) -> Vec<State> {
    let Some(expected) = expected else {
        return vec![];
    };
    if expected == current {
        return vec![];
    }
    match state {
        None if current == 0 => vec![None],
        Some((value, known)) if current != 0 && agrees(*known, current) => {
            vec![Some((value.clone(), Some(current)))]
        }
        _ => vec![],
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Call::Get => write!(f, "GET"),
            Call::Put { value, if_version } => {
                write!(f, "PUT {:?}", text(value))?;
                if_version.map_or(Ok(()), |v| write!(f, " if-version {v}"))
            }
            Call::Delete { if_version } => {
                write!(f, "DELETE")?;
                if_version.map_or(Ok(()), |v| write!(f, " if-version {v}"))
            }
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Found { value, version } => write!(f, "{:?} v{version}", text(value)),
            Outcome::NotFound => write!(f, "NOT_FOUND"),
            Outcome::Written { version } => write!(f, "OK v{version}"),
            Outcome::Deleted => write!(f, "OK"),
            Outcome::VersionMismatch { current } => write!(f, "VERSION_MISMATCH v{current}"),
            Outcome::Unknown => write!(f, "outcome unknown"),
        }
    }
}

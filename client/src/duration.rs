//! Durations on command lines: `500ms`, `30s`, `1.5s`, `5m`, `2h`, `1d`; a bare number is seconds.
//! Shared by the `tessera` CLI and `tessera-loadgen`.

use std::time::Duration;

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration like 30s"))?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        "d" => number * 86_400.0,
        _ => {
            return Err(format!(
                "'{text}': unknown unit '{unit}' (use ms, s, m, h or d)"
            ))
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("'{text}' is out of range"))
}

/// A TTL in milliseconds, for `--ttl`: a duration as above, rounded up to whole milliseconds.
/// Zero is refused (it would expire at once: leave the TTL out for a key that never expires),
/// and so is anything past the protocol's limit of 100 years, checked without overflow.
pub fn parse_ttl_ms(text: &str) -> Result<u64, String> {
    use tessera_schema::limits::MAX_TTL_MS;
    let ttl = parse_duration(text)?;
    if ttl.is_zero() {
        return Err(format!(
            "'{text}': a TTL of 0 would expire at once (leave out --ttl for no expiry)"
        ));
    }
    let millis = ttl.as_nanos().div_ceil(1_000_000);
    match u64::try_from(millis) {
        Ok(millis) if millis <= MAX_TTL_MS => Ok(millis),
        _ => Err(format!("'{text}' is over the longest TTL, 100 years")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_are_checked_without_overflow() {
        assert_eq!(parse_ttl_ms("30s"), Ok(30_000));
        assert_eq!(parse_ttl_ms("0.5ms"), Ok(1), "rounded up, never to zero");
        assert!(parse_ttl_ms("0s").is_err());
        assert!(parse_ttl_ms("0").is_err());
        // Used to wrap to a 384 ms TTL.
        assert!(parse_ttl_ms("18446744073709552s").is_err());
        assert!(parse_ttl_ms("101y").is_err());
        assert!(parse_ttl_ms("36501d").is_err());
        assert_eq!(parse_ttl_ms("36500d"), Ok(36_500 * 86_400_000));
    }

    #[test]
    fn units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("s").is_err());
    }
}

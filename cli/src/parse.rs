//! Parsers for human-friendly option values: durations (`90s`, `7d`),
//! sizes (`10M`, `2G`) and compression modes (`zstd:3`). Not for anything on the wire.

use std::time::Duration;

/// `N` (seconds) or `N` followed by `ms`, `s`, `m`, `h` or `d`.
pub fn duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration like 30s, 5m, 12h or 7d"))?;
    let mult = match unit {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => {
            return Err(format!(
                "unknown unit '{unit}' in '{s}' (use ms, s, m, h or d)"
            ))
        }
    };
    let secs = n * mult;
    if !secs.is_finite() || !(0.0..=1e10).contains(&secs) {
        return Err(format!("'{s}' is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `auto`, `off`, `zstd` or `zstd:LEVEL` (see `Compress`'s parser).
pub fn compress(s: &str) -> Result<bigtransfer_core::compress::Compress, String> {
    s.trim()
        .parse()
        .map_err(|e: bigtransfer_core::Error| e.to_string())
}

/// `N` bytes, or `N` followed by `K`, `M`, `G` or `T` (powers of 1024;
/// an optional trailing `B` or `iB` is accepted).
pub fn size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size like 500M or 2G"))?;
    let unit = unit.to_ascii_uppercase();
    let unit = unit.trim_end_matches("IB").trim_end_matches('B');
    let shift = match unit {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("unknown unit in '{s}' (use K, M, G or T)")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("'{s}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("60").unwrap(), Duration::from_secs(60));
        assert_eq!(duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(duration("7d").unwrap(), Duration::from_secs(7 * 86400));
        assert_eq!(duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(duration("0").unwrap(), Duration::ZERO);
        assert!(duration("7w").is_err());
        assert!(duration("").is_err());
        assert!(duration("-1s").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(size("10").unwrap(), 10);
        assert_eq!(size("10K").unwrap(), 10 << 10);
        assert_eq!(size("3M").unwrap(), 3 << 20);
        assert_eq!(size("2GiB").unwrap(), 2 << 30);
        assert_eq!(size("1tb").unwrap(), 1 << 40);
        assert!(size("x").is_err());
        assert!(size("99999999999T").is_err());
    }
}

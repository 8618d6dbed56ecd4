//! Parsing of command-line quantities shared by the subcommands.

use std::time::Duration;

/// Parses `10s`, `500ms`, `2m`, `1.5` (seconds) or `0`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number.trim().parse().map_err(|_| {
        format!("invalid duration {text:?}: use e.g. 10s, 500ms, 2m or plain seconds")
    })?;
    if !value.is_finite() || value < 0.0 || value * scale > 1e9 {
        return Err(format!(
            "invalid duration {text:?}: must be between 0 and 10^9 seconds"
        ));
    }
    Ok(Duration::from_secs_f64(value * scale))
}

/// Parses a byte size: `4096`, `64k`, `1m`, `1MiB`, `2g` (binary multiples).
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    let lower = text.trim().to_ascii_lowercase();
    if lower.starts_with('-') {
        return Err(format!("invalid size {text:?}: a size cannot be negative"));
    }
    let digits_end = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(digits_end);
    let shift = match unit.trim() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("invalid size {text:?}: use e.g. 4096, 64k, 1m")),
    };
    let value: usize = number
        .parse()
        .map_err(|_| format!("invalid size {text:?}: use e.g. 4096, 64k, 1m"))?;
    value
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("nan").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("64k"), Ok(65536));
        assert_eq!(parse_bytes("1MiB"), Ok(1 << 20));
        assert!(parse_bytes("1x").is_err());
        assert!(parse_bytes("k").is_err());
        assert_eq!(
            parse_bytes("-5"),
            Err("invalid size \"-5\": a size cannot be negative".to_string())
        );
        assert!(parse_bytes("99999999999999999999g").is_err());
    }
}

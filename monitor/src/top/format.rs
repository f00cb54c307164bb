//! Compact number, rate, latency and duration text for a screen where every column
//! counts: an 80-column SSH session during an incident.

/// Integers: exact below a thousand, then three significant digits with a unit
/// ("1.2k", "12.3k", "123k", "1.2M").
pub fn count(n: u64) -> String {
    if n < 1000 {
        n.to_string()
    } else {
        scaled(n as f64)
    }
}

/// Per-second rates: one decimal while small so a trickle of 0.3/s is not shown as 0,
/// compact units once large. NaN or negative (a counter reset mid-window) is "-".
pub fn rate(v: f64) -> String {
    if !v.is_finite() || v < 0.0 {
        "-".to_string()
    } else if v < 99.95 {
        format!("{v:.1}")
    } else if v < 999.5 {
        format!("{v:.0}")
    } else {
        scaled(v)
    }
}

/// Above a thousand: the largest unit that keeps the figure under 1000 after
/// rounding, so 999_950 reads "1.0M", never "1000k".
fn scaled(v: f64) -> String {
    const UNITS: [&str; 6] = ["k", "M", "G", "T", "P", "E"];
    let mut s = v / 1000.0;
    for (i, unit) in UNITS.iter().enumerate() {
        if s < 99.95 {
            return format!("{s:.1}{unit}");
        }
        if s < 999.5 || i == UNITS.len() - 1 {
            return format!("{s:.0}{unit}");
        }
        s /= 1000.0;
    }
    unreachable!("the last unit always returns")
}

/// A 0..=1 share as a percentage; "100%" rather than "100.0%" keeps the column narrow.
pub fn percent(share: f64) -> String {
    if !share.is_finite() {
        return "-".to_string();
    }
    let p = share * 100.0;
    if p >= 99.95 {
        format!("{p:.0}%")
    } else {
        format!("{p:.1}%")
    }
}

/// Handshake latency given in microseconds; "-" when the interval had none.
pub fn latency_us(us: Option<f64>) -> String {
    let Some(us) = us.filter(|v| v.is_finite() && *v >= 0.0) else {
        return "-".to_string();
    };
    if us < 999.5 {
        return format!("{us:.0}µs");
    }
    let ms = us / 1000.0;
    if ms < 9.995 {
        format!("{ms:.2}ms")
    } else if ms < 99.95 {
        format!("{ms:.1}ms")
    } else if ms < 999.5 {
        format!("{ms:.0}ms")
    } else {
        let s = ms / 1000.0;
        if s < 9.995 {
            format!("{s:.2}s")
        } else {
            format!("{s:.1}s")
        }
    }
}

/// How long something has lasted, at the two most significant units ("45s", "12m03s",
/// "3h07m", "2d04h"): enough to tell a fresh flood from an old one.
pub fn duration_secs(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// The sampling ratio the way an operator thinks of it: "full", or one event in N.
pub fn sampling(ratio: f64) -> String {
    if !ratio.is_finite() || ratio <= 0.0 {
        // A default (never filled) snapshot, or a kernel that emits nothing.
        return "-".to_string();
    }
    if ratio >= 1.0 {
        return "full".to_string();
    }
    let n = 1.0 / ratio;
    if (n - n.round()).abs() < 0.05 {
        format!("1/{:.0}", n.round())
    } else {
        format!("1/{n:.1}")
    }
}

/// UTC time of day of a Unix-epoch millisecond stamp: agents and SREs rarely share a
/// time zone, and UTC is what the logs say.
pub fn utc_time_of_day(unix_ms: u64) -> String {
    let secs = unix_ms / 1000 % 86_400;
    format!(
        "{:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1.0k");
        assert_eq!(count(1234), "1.2k");
        assert_eq!(count(12_345), "12.3k");
        assert_eq!(count(99_949), "99.9k");
        assert_eq!(count(99_960), "100k");
        assert_eq!(count(123_456), "123k");
        assert_eq!(count(999_499), "999k");
        assert_eq!(count(999_950), "1.0M");
        assert_eq!(count(3_400_000), "3.4M");
        assert_eq!(count(7_890_000_000), "7.9G");
        assert_eq!(count(u64::MAX), "18.4E");
    }

    #[test]
    fn rates() {
        assert_eq!(rate(0.0), "0.0");
        assert_eq!(rate(0.3), "0.3");
        assert_eq!(rate(12.34), "12.3");
        assert_eq!(rate(99.96), "100");
        assert_eq!(rate(456.7), "457");
        assert_eq!(rate(999.6), "1.0k");
        assert_eq!(rate(45_210.0), "45.2k");
        assert_eq!(rate(1.5e6), "1.5M");
        assert_eq!(rate(f64::NAN), "-");
        assert_eq!(rate(-1.0), "-");
        assert_eq!(rate(f64::INFINITY), "-");
    }

    #[test]
    fn percents() {
        assert_eq!(percent(0.0), "0.0%");
        assert_eq!(percent(0.973), "97.3%");
        assert_eq!(percent(1.0), "100%");
        assert_eq!(percent(0.00049), "0.0%");
        assert_eq!(percent(f64::NAN), "-");
    }

    #[test]
    fn latencies() {
        assert_eq!(latency_us(None), "-");
        assert_eq!(latency_us(Some(f64::NAN)), "-");
        assert_eq!(latency_us(Some(0.0)), "0µs");
        assert_eq!(latency_us(Some(85.4)), "85µs");
        assert_eq!(latency_us(Some(999.4)), "999µs");
        assert_eq!(latency_us(Some(999.6)), "1.00ms");
        assert_eq!(latency_us(Some(1234.0)), "1.23ms");
        assert_eq!(latency_us(Some(12_345.0)), "12.3ms");
        assert_eq!(latency_us(Some(345_000.0)), "345ms");
        assert_eq!(latency_us(Some(1_500_000.0)), "1.50s");
        assert_eq!(latency_us(Some(75_000_000.0)), "75.0s");
    }

    #[test]
    fn durations() {
        assert_eq!(duration_secs(0), "0s");
        assert_eq!(duration_secs(45), "45s");
        assert_eq!(duration_secs(723), "12m03s");
        assert_eq!(duration_secs(3 * 3600 + 7 * 60 + 5), "3h07m");
        assert_eq!(duration_secs(2 * 86_400 + 4 * 3600), "2d04h");
    }

    #[test]
    fn sampling_ratios() {
        assert_eq!(sampling(1.0), "full");
        assert_eq!(sampling(0.125), "1/8");
        assert_eq!(sampling(1.0 / 3.0), "1/3");
        assert_eq!(sampling(0.3), "1/3.3");
        assert_eq!(sampling(0.0), "-");
        assert_eq!(sampling(f64::NAN), "-");
    }

    #[test]
    fn time_of_day() {
        assert_eq!(utc_time_of_day(0), "00:00:00 UTC");
        // 2026-12-01T20:28:17.5Z
        assert_eq!(utc_time_of_day(1_796_156_897_500), "20:28:17 UTC");
    }
}

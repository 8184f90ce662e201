//! Signal names as users and VIC write them: a number, `NAME` or `SIGNAME`, in any case.
//! VIC accepted 13 names; we accept every Linux signal, plus `RTMIN+n`/`RTMAX-n`.

const NAMES: &[(&str, i32)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("IOT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("STKFLT", 16),
    ("CHLD", 17),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("URG", 23),
    ("XCPU", 24),
    ("XFSZ", 25),
    ("VTALRM", 26),
    ("PROF", 27),
    ("WINCH", 28),
    ("IO", 29),
    ("POLL", 29),
    ("PWR", 30),
    ("SYS", 31),
];

const RTMIN: i32 = 34;
const RTMAX: i32 = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unsupported signal {0:?}")]
pub struct BadSignal(pub String);

/// Parses `9`, `KILL`, `SIGKILL`, `sigkill`, `RTMIN+3`. Zero and negative numbers are refused.
pub fn parse(spec: &str) -> Result<i32, BadSignal> {
    let bad = || BadSignal(spec.to_string());
    let s = spec.trim();
    if let Ok(n) = s.parse::<i32>() {
        return if (1..=RTMAX).contains(&n) {
            Ok(n)
        } else {
            Err(bad())
        };
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some(&(_, n)) = NAMES.iter().find(|(nm, _)| *nm == name) {
        return Ok(n);
    }
    let rt = |base: i32, rest: &str, sign: i32| -> Option<i32> {
        let off = if rest.is_empty() {
            0
        } else {
            rest.parse::<i32>().ok()?
        };
        let n = base + sign * off;
        (RTMIN..=RTMAX).contains(&n).then_some(n)
    };
    if let Some(rest) = name.strip_prefix("RTMIN") {
        return rest
            .strip_prefix('+')
            .map_or_else(|| rt(RTMIN, rest, 1), |r| rt(RTMIN, r, 1))
            .ok_or_else(bad);
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        return rest
            .strip_prefix('-')
            .map_or_else(|| rt(RTMAX, rest, -1), |r| rt(RTMAX, r, -1))
            .ok_or_else(bad);
    }
    Err(bad())
}

/// The name of signal `n` without `SIG` (`TERM`), as SSH's `exit-signal` carries it.
pub fn name(n: i32) -> Option<String> {
    if let Some(&(nm, _)) = NAMES.iter().find(|(_, v)| *v == n) {
        return Some(nm.to_string());
    }
    match n {
        RTMIN => Some("RTMIN".into()),
        RTMAX => Some("RTMAX".into()),
        n if (RTMIN..RTMAX).contains(&n) => Some(format!("RTMIN+{}", n - RTMIN)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_vics_spellings_and_more() {
        for s in ["SIGQUIT", "QUIT", "quit", "3", "SigQuit", " 3 "] {
            assert_eq!(parse(s), Ok(3), "{s}");
        }
        assert_eq!(parse("WINCH"), Ok(28));
        assert_eq!(parse("SIGRTMIN+2"), Ok(36));
        assert_eq!(parse("RTMAX-1"), Ok(63));
        assert_eq!(parse("RTMIN"), Ok(34));
    }

    #[test]
    fn refuses_what_vic_refused() {
        for s in ["SIGNOPE", "nope", "0", "-1", "65", "", "RTMIN+40", "SIG"] {
            assert!(parse(s).is_err(), "{s}");
        }
    }

    #[test]
    fn names_round_trip() {
        for n in 1..=RTMAX {
            if let Some(nm) = name(n) {
                assert_eq!(parse(&nm), Ok(n), "{nm}");
            }
        }
        assert_eq!(name(15).as_deref(), Some("TERM"));
        assert_eq!(name(32), None);
    }
}

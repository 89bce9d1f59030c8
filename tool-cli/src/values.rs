//! Value parsers the tools' flags share (`value_parser = …` in derive).
//!
//! kube-proxy's (pflag's) spellings, which kube-proxy-rules and calicoctl
//! keep:
//!
//! * `--flag=value` and `--flag value`: clap's default for a flag with a value.
//! * A boolean `--flag`, `--flag=true|false`: a `bool` field with
//!   ```text
//!   #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
//!         default_missing_value = "true", default_value = "false",
//!         value_parser = tool_cli::values::parse_bool)]
//!   ```
//!   (`require_equals`: as pflag, `--flag false` is the flag and a
//!   positional `false`).
//! * A comma list that may also be repeated (`--node-ip A,B --node-ip C`):
//!   a `Vec<CommaList<T>>` field with `value_parser = comma_list::<T>` (or a
//!   parser of the tool's own built on [`CommaList::parse_with`]), read with
//!   [`CommaList::concat`].
//! * The last of a repeated single-valued flag wins: the tool's command has
//!   `#[command(args_override_self = true)]`.

use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

/// A boolean flag's value, as Go's `strconv.ParseBool` (what kube-proxy's
/// flags accept): `1 t T TRUE true True`, `0 f F FALSE false False`.
pub fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("expected true or false, got {v:?}")),
    }
}

/// A duration: a number (decimals allowed) with `ms`, `s`, `m` or `h`, or
/// without a unit in seconds: `30s`, `1m`, `500ms`, `1.5h`, `90`.
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    let v = v.trim();
    let err = || format!("invalid duration {v:?} (e.g. 30s, 1m, 500ms)");
    let (num, unit_secs) = if let Some(n) = v.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = v.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (v, 1.0)
    };
    // Only digits and one dot: f64's own syntax would also take `inf`, `1e3`, `-0`.
    if num.is_empty() || !num.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(err());
    }
    let n: f64 = num.parse().map_err(|_| err())?;
    // Too big for a Duration (`1e30h` cannot be written, `99999…h` can).
    Duration::try_from_secs_f64(n * unit_secs).map_err(|_| err())
}

/// The values of one occurrence of a comma-list flag (empty items skipped:
/// `a,,b` and a trailing comma are two values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommaList<T>(pub Vec<T>);

impl<T> CommaList<T> {
    /// Split `v` at commas, trim, skip empty items and parse each with `item`.
    pub fn parse_with<E: Display>(v: &str, item: impl Fn(&str) -> Result<T, E>) -> Result<Self, String> {
        v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| item(s).map_err(|e| format!("{s:?}: {e}")))
            .collect::<Result<Vec<T>, String>>()
            .map(CommaList)
    }

    /// Every occurrence's values in order.
    pub fn concat(lists: &[CommaList<T>]) -> Vec<T>
    where
        T: Clone,
    {
        lists.iter().flat_map(|l| l.0.iter().cloned()).collect()
    }
}

/// `value_parser = comma_list::<T>` for a `T: FromStr`.
pub fn comma_list<T: FromStr>(v: &str) -> Result<CommaList<T>, String>
where
    T::Err: Display,
{
    CommaList::parse_with(v, T::from_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{ArgAction, Parser};

    #[test]
    fn bools_as_go() {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_bool(t), Ok(true), "{t}");
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_bool(f), Ok(false), "{f}");
        }
        assert!(parse_bool("yes").is_err() && parse_bool("").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        for bad in ["", "s", "-1s", "1e3s", "inf", "1d", "1 m", "99999999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[derive(Parser, Debug)]
    #[command(args_override_self = true)]
    struct Cli {
        #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true,
              default_missing_value = "true", default_value = "false", value_parser = parse_bool)]
        flag: bool,
        #[arg(long, value_parser = comma_list::<u16>)]
        port: Vec<CommaList<u16>>,
        #[arg(long, value_parser = parse_duration)]
        period: Option<Duration>,
        rest: Vec<String>,
    }

    fn parse(argv: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("t").chain(argv.iter().copied()))
    }

    #[test]
    fn kube_proxy_spellings() {
        assert!(!parse(&[]).unwrap().flag);
        assert!(parse(&["--flag"]).unwrap().flag);
        assert!(parse(&["--flag=true"]).unwrap().flag);
        assert!(!parse(&["--flag=false"]).unwrap().flag);
        assert!(!parse(&["--flag", "--flag=0"]).unwrap().flag, "the last one wins");
        // As pflag: a bool takes its value only with `=`.
        let c = parse(&["--flag", "false"]).unwrap();
        assert!(c.flag && c.rest == ["false"]);
        assert!(parse(&["--flag=maybe"]).is_err());
        let c = parse(&["--port=1,2", "--port", "3", "--port", ",4,"]).unwrap();
        assert_eq!(CommaList::concat(&c.port), [1, 2, 3, 4]);
        let e = parse(&["--port", "1,x"]).unwrap_err().to_string();
        assert!(e.contains("--port") && e.contains("\"x\""), "{e}");
        assert_eq!(parse(&["--period=1m", "--period", "2s"]).unwrap().period, Some(Duration::from_secs(2)));
    }
}

//! Calico's label selector language, the subset the model uses: IP pools'
//! and BGP peers' `nodeSelector` and BGP peers' `peerSelector`, all evaluated
//! against a Node resource's `metadata.labels`.
//!
//! Supported: `all()`, `has(k)`, `k == 'v'`, `k != 'v'`, `!`, `&&`, `||` and
//! parentheses. An empty selector selects everything, like `all()`. Anything
//! else (`in`, `contains`, ...) is a [`SelectorError`], never a silent match.
//!
//! Selectors come from datastore documents anyone with write access can
//! edit, and the parser is recursive: a selector longer than
//! [`MAX_SELECTOR_LEN`] bytes or nested deeper than [`MAX_SELECTOR_DEPTH`]
//! (parentheses and `!`) is rejected before it can exhaust the stack. Calico
//! sets no explicit bound that we found; these are far beyond any real
//! `nodeSelector`/`peerSelector` and keep the left-deep `&&`/`||` trees a
//! 4096-byte selector can build shallow enough for recursive matching.

use std::collections::BTreeMap;

/// The longest selector accepted, in bytes.
pub const MAX_SELECTOR_LEN: usize = 4096;
/// The deepest nesting of parentheses and `!` accepted.
pub const MAX_SELECTOR_DEPTH: usize = 64;

/// A selector that does not parse: the text and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector {selector:?}: {reason}")]
pub struct SelectorError {
    pub selector: String,
    pub reason: String,
}

/// A parsed label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    All,
    Has(String),
    Eq(String, String),
    Ne(String, String),
    Not(Box<Selector>),
    And(Box<Selector>, Box<Selector>),
    Or(Box<Selector>, Box<Selector>),
}

impl Selector {
    pub fn parse(s: &str) -> Result<Selector, SelectorError> {
        if s.len() > MAX_SELECTOR_LEN {
            // Do not echo a huge document into every log line.
            let head: String = s.chars().take(64).collect();
            return Err(SelectorError {
                selector: format!("{head}..."),
                reason: format!("{} bytes, longer than the limit of {MAX_SELECTOR_LEN}", s.len()),
            });
        }
        let bad = |why: &str| SelectorError { selector: s.to_string(), reason: why.to_string() };
        if s.trim().is_empty() {
            return Ok(Selector::All);
        }
        let tokens = tokenize(s).map_err(|e| bad(&e))?;
        let mut p = Parser { tokens, pos: 0, depth: 0 };
        let sel = p.or().map_err(|e| bad(&e))?;
        if p.pos != p.tokens.len() {
            return Err(bad("trailing input"));
        }
        Ok(sel)
    }

    /// True when the selector matches everything regardless of labels.
    pub fn is_all(&self) -> bool {
        matches!(self, Selector::All)
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Selector::All => true,
            Selector::Has(k) => labels.contains_key(k),
            Selector::Eq(k, v) => labels.get(k) == Some(v),
            Selector::Ne(k, v) => labels.get(k) != Some(v),
            Selector::Not(s) => !s.matches(labels),
            Selector::And(a, b) => a.matches(labels) && b.matches(labels),
            Selector::Or(a, b) => a.matches(labels) || b.matches(labels),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Str(String),
    LParen,
    RParen,
    Not,
    And,
    Or,
    EqEq,
    NotEq,
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match c {
            ' ' | '\t' | '\n' => i += 1,
            '(' => {
                out.push(Tok::LParen);
                i += 1
            }
            ')' => {
                out.push(Tok::RParen);
                i += 1
            }
            '!' if next == Some('=') => {
                out.push(Tok::NotEq);
                i += 2
            }
            '!' => {
                out.push(Tok::Not);
                i += 1
            }
            '=' if next == Some('=') => {
                out.push(Tok::EqEq);
                i += 2
            }
            '&' if next == Some('&') => {
                out.push(Tok::And);
                i += 2
            }
            '|' if next == Some('|') => {
                out.push(Tok::Or);
                i += 2
            }
            '\'' | '"' => {
                let end = chars[i + 1..].iter().position(|&x| x == c).ok_or("unterminated string")?;
                out.push(Tok::Str(chars[i + 1..i + 1 + end].iter().collect()));
                i += end + 2;
            }
            c if c.is_alphanumeric() || "_-./".contains(c) => {
                let start = i;
                while i < chars.len() && (chars[i].is_alphanumeric() || "_-./".contains(chars[i])) {
                    i += 1;
                }
                out.push(Tok::Ident(chars[start..i].iter().collect()));
            }
            other => return Err(format!("unexpected character {other:?}")),
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Tok>,
    pos: usize,
    /// Current nesting of `(` and `!` (each one recursion of `unary`).
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn expect(&mut self, t: Tok) -> Result<(), String> {
        match self.next() {
            Some(x) if x == t => Ok(()),
            other => Err(format!("expected {t:?}, found {other:?}")),
        }
    }

    fn or(&mut self) -> Result<Selector, String> {
        let mut left = self.and()?;
        while self.peek() == Some(&Tok::Or) {
            self.pos += 1;
            left = Selector::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Selector, String> {
        let mut left = self.unary()?;
        while self.peek() == Some(&Tok::And) {
            self.pos += 1;
            left = Selector::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Selector, String> {
        if self.depth >= MAX_SELECTOR_DEPTH {
            return Err(format!("nested deeper than {MAX_SELECTOR_DEPTH} levels"));
        }
        self.depth += 1;
        let res = self.unary_inner();
        self.depth -= 1;
        res
    }

    fn unary_inner(&mut self) -> Result<Selector, String> {
        match self.next() {
            Some(Tok::Not) => Ok(Selector::Not(Box::new(self.unary()?))),
            Some(Tok::LParen) => {
                let s = self.or()?;
                self.expect(Tok::RParen)?;
                Ok(s)
            }
            Some(Tok::Ident(id)) if id == "all" => {
                self.expect(Tok::LParen)?;
                self.expect(Tok::RParen)?;
                Ok(Selector::All)
            }
            Some(Tok::Ident(id)) if id == "has" && self.peek() == Some(&Tok::LParen) => {
                self.pos += 1;
                let key = match self.next() {
                    Some(Tok::Ident(k)) => k,
                    other => return Err(format!("has() needs a label key, found {other:?}")),
                };
                self.expect(Tok::RParen)?;
                Ok(Selector::Has(key))
            }
            Some(Tok::Ident(key)) => {
                let op = self.next();
                let val = match self.next() {
                    Some(Tok::Str(v)) => v,
                    other => return Err(format!("expected a quoted value after {key}, found {other:?}")),
                };
                match op {
                    Some(Tok::EqEq) => Ok(Selector::Eq(key, val)),
                    Some(Tok::NotEq) => Ok(Selector::Ne(key, val)),
                    other => Err(format!("expected == or != after {key}, found {other:?}")),
                }
            }
            other => Err(format!("unexpected {other:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn selectors_match_labels() {
        let l = labels(&[("zone", "a"), ("kubernetes.io/os", "linux")]);
        let cases = [
            ("", true),
            ("all()", true),
            ("has(zone)", true),
            ("!has(zone)", false),
            ("zone == 'a'", true),
            ("zone == \"b\"", false),
            ("zone != 'b'", true),
            ("zone == 'b' || kubernetes.io/os == 'linux'", true),
            ("zone == 'a' && !(has(gpu))", true),
            ("zone == 'a' && has(gpu)", false),
        ];
        for (s, want) in cases {
            assert_eq!(Selector::parse(s).unwrap().matches(&l), want, "{s}");
        }
        assert!(Selector::parse("all()").unwrap().is_all());
    }

    #[test]
    fn bad_selectors_are_errors() {
        for s in ["zone ==", "zone = 'a'", "has(", "zone == 'a", "all() &&", "(zone == 'a'", "zone in {'a'}"]
        {
            let e = Selector::parse(s).unwrap_err();
            assert_eq!(e.selector, s);
            assert!(e.to_string().starts_with("invalid selector"), "{e}");
        }
    }

    #[test]
    fn nesting_and_length_are_bounded() {
        // 200k parentheses used to overflow the stack (SIGABRT).
        let deep = format!("{}has(a){}", "(".repeat(200_000), ")".repeat(200_000));
        let e = Selector::parse(&deep).unwrap_err();
        assert!(e.reason.contains("longer than"), "{e}");
        assert!(e.selector.len() < 100, "the error does not echo the whole input");
        let bangs = format!("{}has(a)", "!".repeat(MAX_SELECTOR_LEN - 6));
        assert!(Selector::parse(&bangs).unwrap_err().reason.contains("nested deeper"));
        // Within both limits: fine.
        let ok =
            format!("{}has(a){}", "(".repeat(MAX_SELECTOR_DEPTH - 1), ")".repeat(MAX_SELECTOR_DEPTH - 1));
        assert!(Selector::parse(&ok).unwrap().matches(&labels(&[("a", "")])));
        let too_deep = format!("{}has(a){}", "(".repeat(MAX_SELECTOR_DEPTH), ")".repeat(MAX_SELECTOR_DEPTH));
        assert!(Selector::parse(&too_deep).unwrap_err().reason.contains("nested deeper"));
        // A long flat selector within the length limit parses and matches.
        let flat = vec!["has(a)"; 400].join(" && ");
        assert!(flat.len() <= MAX_SELECTOR_LEN);
        assert!(Selector::parse(&flat).unwrap().matches(&labels(&[("a", "")])));
    }
}

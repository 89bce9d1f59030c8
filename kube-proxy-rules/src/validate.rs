//! Names, validated as the API server validates them, and the writers'
//! backstop against text that could change what a payload says.
//!
//! kube-proxy puts namespace, Service and port names into nftables chain
//! names, element and rule comments and iptables comments as they are,
//! because the API server only admits DNS labels there. Here the objects come
//! from files and the pod records from a datastore, which nobody validates:
//! a name with a quote and a newline would end the comment and add
//! operations of its own (another table, an ACCEPT rule), and a merely
//! malformed one would make the whole transaction fail. So the inputs are
//! checked with the API server's rules ([`dns1123_label`],
//! [`dns1123_subdomain`], [`iana_svc_name`]) and a bad object is reported and
//! skipped; and the payload writers refuse any name or comment that could
//! still break out ([`check_name`], [`check_comment`]), so that a future code
//! path that forgets the input check fails with an error instead.

use std::fmt;

/// `validation.DNS1123LabelMaxLength`.
pub const DNS1123_LABEL_MAX: usize = 63;
/// `validation.DNS1123SubdomainMaxLength`.
pub const DNS1123_SUBDOMAIN_MAX: usize = 253;
/// An IANA service name (a named port) is at most 15 characters.
pub const IANA_SVC_NAME_MAX: usize = 15;

fn label_chars_ok(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.iter().all(|c| alnum(c) || *c == b'-')
        && b.first().is_some_and(alnum)
        && b.last().is_some_and(alnum)
}

/// `IsDNS1123Label`: namespaces, Service names, Service and EndpointSlice
/// port names, the `kubernetes.io/service-name` label.
pub fn dns1123_label(s: &str) -> Result<(), String> {
    if s.len() > DNS1123_LABEL_MAX {
        return Err(format!("must be at most {DNS1123_LABEL_MAX} characters (an RFC 1123 label)"));
    }
    if !label_chars_ok(s) {
        return Err("must be a lowercase RFC 1123 label: lower case alphanumeric characters or '-', \
                    starting and ending with an alphanumeric character"
            .into());
    }
    Ok(())
}

/// `IsDNS1123Subdomain`: EndpointSlice, Pod, Deployment and Node names.
pub fn dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.len() > DNS1123_SUBDOMAIN_MAX {
        return Err(format!("must be at most {DNS1123_SUBDOMAIN_MAX} characters (an RFC 1123 subdomain)"));
    }
    if !s.split('.').all(label_chars_ok) {
        return Err("must be a lowercase RFC 1123 subdomain: lower case alphanumeric characters, '-' or \
                    '.', each part starting and ending with an alphanumeric character"
            .into());
    }
    Ok(())
}

/// `IsValidPortName` (IANA_SVC_NAME, RFC 6335): a named `targetPort`.
pub fn iana_svc_name(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= IANA_SVC_NAME_MAX
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.iter().any(u8::is_ascii_lowercase)
        && b.first() != Some(&b'-')
        && b.last() != Some(&b'-')
        && !s.contains("--");
    if !ok {
        return Err(format!(
            "must be an IANA_SVC_NAME: at most {IANA_SVC_NAME_MAX} characters of [a-z0-9-], at least \
             one letter, no leading, trailing or double '-'"
        ));
    }
    Ok(())
}

/// A name or comment a payload writer refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct UnsafeText {
    /// What it was going to be (`nft chain name`, `iptables comment`, …).
    pub what: &'static str,
    pub text: String,
    pub bad: char,
}

impl fmt::Display for UnsafeText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "refusing to write {} {:?}: it contains {:?}, which could change what the payload says",
            self.what, self.text, self.bad
        )
    }
}

/// Characters no name or comment may contain: quotes end a comment, line
/// ends and `;` end an nft/iptables-restore command, braces end an element
/// or set, `#` starts a comment, `\` escapes in iptables-restore.
const FORBIDDEN: &[char] = &['"', '\n', '\r', ';', '{', '}', '#', '\\'];

fn first_bad(text: &str, allow_space: bool) -> Option<char> {
    text.chars().find(|c| FORBIDDEN.contains(c) || !(c.is_ascii_graphic() || (allow_space && *c == ' ')))
}

/// A chain, set or other object name inside a payload: printable ASCII, no
/// spaces, none of the [`FORBIDDEN`] characters, not empty.
pub fn check_name(what: &'static str, name: &str) -> Result<(), UnsafeText> {
    if name.is_empty() {
        return Err(UnsafeText { what, text: String::new(), bad: ' ' });
    }
    match first_bad(name, false) {
        Some(bad) => Err(UnsafeText { what, text: name.to_string(), bad }),
        None => Ok(()),
    }
}

/// The text of a quoted comment: printable ASCII (spaces allowed), none of
/// the [`FORBIDDEN`] characters.
pub fn check_comment(what: &'static str, comment: &str) -> Result<(), UnsafeText> {
    match first_bad(comment, true) {
        Some(bad) => Err(UnsafeText { what, text: comment.to_string(), bad }),
        None => Ok(()),
    }
}

/// Any text of a payload line, fixed syntax included: printable ASCII and
/// spaces only, so that it stays on its line (no command of its own).
pub fn check_line(what: &'static str, text: &str) -> Result<(), UnsafeText> {
    match text.chars().find(|c| !(c.is_ascii_graphic() || *c == ' ')) {
        Some(bad) => Err(UnsafeText { what, text: text.to_string(), bad }),
        None => Ok(()),
    }
}

/// A word of a rule (matches, addresses, verdicts, anonymous sets): as
/// [`check_line`], and no quote, `;`, `#` or `\` (braces are rule syntax).
pub fn check_word(what: &'static str, word: &str) -> Result<(), UnsafeText> {
    check_line(what, word)?;
    match word.chars().find(|c| matches!(c, '"' | ';' | '#' | '\\')) {
        Some(bad) => Err(UnsafeText { what, text: word.to_string(), bad }),
        None => Ok(()),
    }
}

/// A name as messages show it: as is when it is plain, else quoted with
/// escapes (a bad object's name must not add lines to the log).
pub fn display_name(s: &str) -> std::borrow::Cow<'_, str> {
    if s.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '\\') {
        std::borrow::Cow::Borrowed(s)
    } else {
        std::borrow::Cow::Owned(format!("{s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_subdomains_and_port_names_follow_the_api_server() {
        for ok in ["a", "ns1", "a-b", "0abc", &"a".repeat(63)] {
            assert!(dns1123_label(ok).is_ok(), "{ok}");
        }
        for bad in ["", "A", "-a", "a-", "a_b", "a.b", "a\n", "x\" : drop", &"a".repeat(64)] {
            assert!(dns1123_label(bad).is_err(), "{bad:?}");
        }
        assert!(dns1123_subdomain("a.b-c.d").is_ok());
        assert!(dns1123_subdomain(&format!("{}.{}", "a".repeat(63), "b".repeat(63))).is_ok());
        for bad in ["", "a..b", ".a", "a.", "A.b", "a_b", &"a".repeat(254)] {
            assert!(dns1123_subdomain(bad).is_err(), "{bad:?}");
        }
        for ok in ["http", "h2c", "dns-tcp", "a1", &"a".repeat(15)] {
            assert!(iana_svc_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "80", "-http", "http-", "http--alt", "HTTP", "a_b", &"a".repeat(16)] {
            assert!(iana_svc_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_backstop_refuses_what_could_break_out() {
        assert!(check_name("n", "service-ULMVA6XW-ns1/svc1/tcp/p80").is_ok());
        assert!(check_comment("c", "ns1/svc1:p80 cluster IP").is_ok());
        for c in ['"', '\n', '\r', ';', '{', '}', '#', '\\', '\0', '\u{7f}', 'é'] {
            let s = format!("ns1/a{c}b");
            assert_eq!(check_name("n", &s).unwrap_err().bad, c);
            assert_eq!(check_comment("c", &s).unwrap_err().bad, c);
        }
        assert_eq!(check_name("n", "a b").unwrap_err().bad, ' ');
        assert!(check_name("n", "").is_err());
        assert!(check_word("w", "numgen random mod 2 vmap {").is_ok());
        assert!(check_word("w", "x\nadd table ip t").is_err());
        assert!(check_word("w", "accept ; add table ip t").is_err());
        assert!(check_line("l", "{ comment \"rules for kube-proxy\" ; }").is_ok());
        assert!(check_line("l", "x\radd table ip t").is_err());
        let e = check_comment("nft element comment", "x\" : drop }").unwrap_err();
        assert_eq!(
            e.to_string(),
            "refusing to write nft element comment \"x\\\" : drop }\": it contains '\"', which could \
             change what the payload says"
        );
    }

    #[test]
    fn names_in_messages_stay_on_one_line() {
        assert_eq!(display_name("ns1"), "ns1");
        assert_eq!(display_name("a\"\nb"), "\"a\\\"\\nb\"");
        assert_eq!(display_name("a b"), "\"a b\"");
    }
}

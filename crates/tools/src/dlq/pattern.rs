//! Error patterns: a reason with its variable parts folded, so that 10,000 reasons such as
//! `bad timestamp: 2026-13-45` and `bad timestamp: yesterday` count as one pattern
//! `bad timestamp: <value>` (the start of the DLQ tools' `stats`).

/// The pattern of a dead letter reason: what follows `: ` becomes `<value>`, and in the rest
/// quoted text becomes `'…'` and numbers become `N`.
pub fn pattern_of(reason: &str) -> String {
    let (head, has_value) = match reason.split_once(": ") {
        Some((head, _)) => (head, true),
        None => (reason, false),
    };
    let mut out = String::with_capacity(head.len() + 8);
    let mut chars = head.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                for next in chars.by_ref() {
                    if next == c {
                        break;
                    }
                }
                out.push(c);
                out.push('…');
                out.push(c);
            }
            c if c.is_ascii_digit() && !glued_to_word(&out) => {
                while chars
                    .peek()
                    .is_some_and(|n| n.is_ascii_digit() || *n == '.')
                {
                    chars.next();
                }
                out.push('N');
            }
            c => out.push(c),
        }
    }
    if has_value {
        out.push_str(": <value>");
    }
    out
}

/// Whether a digit following `text` belongs to a word such as `v2` or `utf-8` rather than
/// being a number of its own.
fn glued_to_word(text: &str) -> bool {
    let mut back = text.chars().rev();
    match back.next() {
        Some(p) if p.is_alphanumeric() || p == '_' => true,
        Some('-') => back.next().is_some_and(|p| p.is_alphanumeric()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::pattern_of;

    #[test]
    fn variable_parts_fold_into_one_pattern() {
        assert_eq!(
            pattern_of("bad timestamp: 2026-13-45"),
            "bad timestamp: <value>"
        );
        assert_eq!(
            pattern_of("bad timestamp: yesterday"),
            "bad timestamp: <value>"
        );
        assert_eq!(pattern_of("late"), "late");
        assert_eq!(
            pattern_of("amount 12.5 above limit 10 for 'acme'"),
            "amount N above limit N for '…'"
        );
        assert_eq!(pattern_of("missing event_id"), "missing event_id");
        assert_eq!(pattern_of("field v2 is \"x\""), "field v2 is \"…\"");
        assert_eq!(pattern_of("invalid utf-8"), "invalid utf-8");
        assert_eq!(pattern_of("amount -12 below 0"), "amount -N below N");
    }
}

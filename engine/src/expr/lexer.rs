//! Tokens of the expression language.

use super::op::Op;
use super::{column_of, ExprError, Which};

/// A token and the byte range it covers.
#[derive(Clone, Debug, PartialEq)]
pub struct Token {
    /// What it is.
    pub kind: Tok,
    /// Byte offset of its first character.
    pub start: usize,
    /// Byte offset just past it.
    pub end: usize,
}

/// Token kinds.
#[derive(Clone, Debug, PartialEq)]
pub enum Tok {
    /// A number, units applied.
    Num(f64),
    /// A quoted string, escapes resolved.
    Str(String),
    /// A bare word: a scope, an attribute name, `in`, `true`, `false`.
    Ident(String),
    /// `.`
    Dot,
    /// `(`
    LParen,
    /// `)`
    RParen,
    /// An operator spelled with punctuation, as [`Op::lex`] reads it (a `-`
    /// is always subtraction here; the parser tells negation by position).
    Op(Op),
    /// End of input.
    End,
}

impl Tok {
    /// How the token reads in an error message.
    pub fn describe(&self) -> String {
        match self {
            Tok::Num(n) => format!("number {n}"),
            Tok::Str(s) => format!("string {s:?}"),
            Tok::Ident(s) => format!("'{s}'"),
            Tok::Dot => "'.'".into(),
            Tok::LParen => "'('".into(),
            Tok::RParen => "')'".into(),
            Tok::Op(op) => format!("'{}'", op.symbol()),
            Tok::End => "end of input".into(),
        }
    }
}

/// Units a number may carry, and their multipliers. Sizes are in bytes, times
/// in seconds.
const UNITS: [(&str, f64); 14] = [
    ("B", 1.0),
    ("KiB", 1024.0),
    ("MiB", 1048576.0),
    ("GiB", 1073741824.0),
    ("TiB", 1099511627776.0),
    ("KB", 1e3),
    ("MB", 1e6),
    ("GB", 1e9),
    ("TB", 1e12),
    ("us", 1e-6),
    ("ms", 1e-3),
    ("s", 1.0),
    ("min", 60.0),
    ("h", 3600.0),
];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}
fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Splits `src` into tokens, ending with [`Tok::End`].
pub fn lex(src: &str, which: Which) -> Result<Vec<Token>, ExprError> {
    let err = |at: usize, message: String| ExprError::Invalid {
        which,
        column: column_of(src, at),
        message,
    };
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < src.len() {
        let Some(c) = src[i..].chars().next() else {
            break;
        };
        if c.is_whitespace() {
            i += c.len_utf8();
            continue;
        }
        let start = i;
        let kind = if c.is_ascii_digit()
            || (c == '.' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            while i < src.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if i < src.len() && bytes[i] == b'.' {
                i += 1;
                while i < src.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
            }
            if i < src.len() && (bytes[i] == b'e' || bytes[i] == b'E') {
                let mut j = i + 1;
                if j < src.len() && (bytes[j] == b'+' || bytes[j] == b'-') {
                    j += 1;
                }
                if j < src.len() && bytes[j].is_ascii_digit() {
                    while j < src.len() && bytes[j].is_ascii_digit() {
                        j += 1;
                    }
                    i = j;
                }
            }
            let text = &src[start..i];
            let value: f64 = text
                .parse()
                .map_err(|_| err(start, format!("malformed number '{text}'")))?;
            let unit_start = i;
            while i < src.len() && is_ident(bytes[i] as char) {
                i += 1;
            }
            let unit = &src[unit_start..i];
            if unit.is_empty() {
                Tok::Num(value)
            } else {
                let Some((_, mul)) = UNITS.iter().find(|(u, _)| *u == unit) else {
                    let known: Vec<&str> = UNITS.iter().map(|(u, _)| *u).collect();
                    return Err(err(
                        unit_start,
                        format!(
                            "unknown unit '{unit}' after number; expected one of {}",
                            known.join(" ")
                        ),
                    ));
                };
                Tok::Num(value * mul)
            }
        } else if is_ident_start(c) {
            while i < src.len() && is_ident(bytes[i] as char) {
                i += 1;
            }
            Tok::Ident(src[start..i].to_string())
        } else if c == '"' || c == '\'' {
            i += 1;
            let mut s = String::new();
            loop {
                let Some(d) = src[i..].chars().next() else {
                    return Err(err(
                        start,
                        format!("unterminated string: expected a closing {c} before the end"),
                    ));
                };
                i += d.len_utf8();
                if d == c {
                    break;
                }
                if d == '\\' {
                    let Some(e) = src[i..].chars().next() else {
                        return Err(err(
                            start,
                            format!("unterminated string: expected a closing {c} before the end"),
                        ));
                    };
                    if e != '\\' && e != '"' && e != '\'' {
                        return Err(err(
                            i - 1,
                            format!("unknown escape '\\{e}' in string; expected \\\\, \\\" or \\'"),
                        ));
                    }
                    i += e.len_utf8();
                    s.push(e);
                } else {
                    s.push(d);
                }
            }
            Tok::Str(s)
        } else {
            let (kind, len) = if let Some((op, len)) = Op::lex(&src[i..]) {
                (Tok::Op(op), len)
            } else {
                let k = match c {
                    '(' => Tok::LParen,
                    ')' => Tok::RParen,
                    '.' => Tok::Dot,
                    '=' => {
                        return Err(err(
                            start,
                            "single '=' is not an operator; expected '==' to compare".into(),
                        ))
                    }
                    '&' => return Err(err(start, "single '&'; expected '&&'".into())),
                    '|' => return Err(err(start, "single '|'; expected '||'".into())),
                    _ => {
                        return Err(err(
                            start,
                            format!("unexpected character {c:?}; expected a number, a string, an attribute or an operator"),
                        ))
                    }
                };
                (k, c.len_utf8())
            };
            i += len;
            kind
        };
        out.push(Token {
            kind,
            start,
            end: i,
        });
    }
    out.push(Token {
        kind: Tok::End,
        start: src.len(),
        end: src.len(),
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::op::{ArOp, BinOp, CmpOp, UnOp};

    fn kinds(s: &str) -> Vec<Tok> {
        lex(s, Which::Require)
            .unwrap()
            .into_iter()
            .map(|t| t.kind)
            .collect()
    }

    #[test]
    fn numbers_take_units() {
        assert_eq!(kinds("512MiB")[0], Tok::Num(512.0 * 1048576.0));
        assert_eq!(kinds("32GiB")[0], Tok::Num(32.0 * 1073741824.0));
        assert_eq!(kinds("1TiB")[0], Tok::Num(1099511627776.0));
        assert_eq!(kinds("250ms")[0], Tok::Num(0.25));
        assert_eq!(kinds("2s")[0], Tok::Num(2.0));
        assert_eq!(kinds("1.5e3")[0], Tok::Num(1500.0));
        assert_eq!(kinds(".5")[0], Tok::Num(0.5));
    }

    #[test]
    fn operators_and_strings() {
        assert_eq!(
            kinds("a.b>=1&&!x||'q\\'s'"),
            vec![
                Tok::Ident("a".into()),
                Tok::Dot,
                Tok::Ident("b".into()),
                Tok::Op(Op::Bin(BinOp::Cmp(CmpOp::Ge))),
                Tok::Num(1.0),
                Tok::Op(Op::Bin(BinOp::And)),
                Tok::Op(Op::Un(UnOp::Not)),
                Tok::Ident("x".into()),
                Tok::Op(Op::Bin(BinOp::Or)),
                Tok::Str("q's".into()),
                Tok::End
            ]
        );
        assert_eq!(
            kinds("-a in b"),
            vec![
                Tok::Op(Op::Bin(BinOp::Ar(ArOp::Sub))),
                Tok::Ident("a".into()),
                Tok::Ident("in".into()),
                Tok::Ident("b".into()),
                Tok::End
            ]
        );
    }
}

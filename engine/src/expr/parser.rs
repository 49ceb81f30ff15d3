//! Recursive-descent parser, with precedence climbing for the binary
//! operators; their precedence and associativity are [`Op`]'s.

use super::lexer::{lex, Tok, Token};
use super::op::{Assoc, BinOp, Op, UnOp};
use super::{column_of, ExprError, Which};

/// Where a reference points.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// `server.X`: a column or label, varies per server.
    Server,
    /// `task.X`
    Task,
    /// `user.X`
    User,
    /// `client.X`
    Client,
}

impl Scope {
    /// The scope's keyword.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Server => "server",
            Scope::Task => "task",
            Scope::User => "user",
            Scope::Client => "client",
        }
    }
}

/// An expression node with the byte range of its source text.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    /// The node.
    pub kind: ExprKind,
    /// Byte offset of the first character.
    pub start: usize,
    /// Byte offset just past the last character.
    pub end: usize,
}

/// Expression nodes.
#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    /// A number literal (units applied).
    Num(f64),
    /// A string literal.
    Str(String),
    /// `true` / `false`.
    Bool(bool),
    /// `scope.name`
    Ref(Scope, String),
    /// A unary operation.
    Unary(UnOp, Box<Expr>),
    /// A binary operation (including `in`).
    Binary(BinOp, Box<Expr>, Box<Expr>),
}

/// Parses one expression.
pub fn parse(src: &str, which: Which) -> Result<Expr, ExprError> {
    let toks = lex(src, which)?;
    let mut p = Parser {
        src,
        toks,
        pos: 0,
        which,
        depth: 0,
    };
    let e = p.binary_expr(0)?;
    let t = p.peek();
    if t.kind != Tok::End {
        return Err(p.err(
            t.start,
            format!(
                "unexpected {} after a complete expression; expected an operator such as && or ||",
                t.kind.describe()
            ),
        ));
    }
    Ok(e)
}

/// Nesting bound: keeps the recursive descent (and the recursive compiler and
/// evaluator) far from the stack limit on hostile input.
const MAX_DEPTH: usize = 64;

struct Parser<'a> {
    src: &'a str,
    toks: Vec<Token>,
    pos: usize,
    which: Which,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Token {
        self.toks[self.pos.min(self.toks.len() - 1)].clone()
    }
    fn bump(&mut self) -> Token {
        let t = self.peek();
        if self.pos < self.toks.len() - 1 {
            self.pos += 1;
        }
        t
    }
    fn err(&self, at: usize, message: String) -> ExprError {
        ExprError::Invalid {
            which: self.which,
            column: column_of(self.src, at),
            message,
        }
    }

    fn binary(op: BinOp, l: Expr, r: Expr) -> Expr {
        Expr {
            start: l.start,
            end: r.end,
            kind: ExprKind::Binary(op, Box::new(l), Box::new(r)),
        }
    }

    /// The binary operator `t` is, where it stands between two operands.
    fn infix(t: &Tok) -> Option<BinOp> {
        match t {
            Tok::Op(Op::Bin(op)) => Some(*op),
            Tok::Ident(w) => match Op::word(w) {
                Some(Op::Bin(op)) => Some(op),
                _ => None,
            },
            _ => None,
        }
    }

    /// An expression whose binary operators all bind at least as tightly as
    /// `min`: operands are prefix expressions, and each operator's right
    /// side takes only operators that bind tighter, which makes a row of
    /// equals group to the left, or, for those that do not chain, an error.
    fn binary_expr(&mut self, min: u8) -> Result<Expr, ExprError> {
        let mut l = self.unary()?;
        while let Some(op) = Self::infix(&self.peek().kind) {
            let prec = op.precedence();
            if prec < min {
                break;
            }
            self.bump();
            let r = self.binary_expr(match op.assoc() {
                Assoc::Right => prec,
                Assoc::Left | Assoc::None => prec + 1,
            })?;
            if op.assoc() == Assoc::None {
                let t = self.peek();
                if Self::infix(&t.kind).is_some_and(|next| next.precedence() == prec) {
                    return Err(self.err(
                        t.start,
                        format!(
                            "comparisons do not chain: found {} after a comparison; expected && or || between comparisons",
                            t.kind.describe()
                        ),
                    ));
                }
            }
            l = Self::binary(op, l, r);
        }
        Ok(l)
    }

    fn enter(&mut self, at: usize) -> Result<(), ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err(
                at,
                format!("expression nested too deeply (more than {MAX_DEPTH} levels); expected a simpler expression"),
            ));
        }
        Ok(())
    }

    fn unary(&mut self) -> Result<Expr, ExprError> {
        let t = self.peek();
        let Some(op) = (match t.kind {
            Tok::Op(op) => op.prefix(),
            _ => None,
        }) else {
            return self.primary();
        };
        self.bump();
        self.enter(t.start)?;
        let e = self.unary()?;
        self.depth -= 1;
        Ok(Expr {
            start: t.start,
            end: e.end,
            kind: ExprKind::Unary(op, Box::new(e)),
        })
    }

    fn primary(&mut self) -> Result<Expr, ExprError> {
        let t = self.bump();
        let kind = match t.kind {
            Tok::Num(n) => ExprKind::Num(n),
            Tok::Str(s) => ExprKind::Str(s),
            Tok::LParen => {
                self.enter(t.start)?;
                let mut e = self.binary_expr(0)?;
                self.depth -= 1;
                let close = self.bump();
                if close.kind != Tok::RParen {
                    return Err(self.err(
                        close.start,
                        format!(
                            "expected ')' to close the '(' at column {}, found {}",
                            column_of(self.src, t.start),
                            close.kind.describe()
                        ),
                    ));
                }
                e.start = t.start;
                e.end = close.end;
                return Ok(e);
            }
            Tok::Ident(w) if w == "true" => ExprKind::Bool(true),
            Tok::Ident(w) if w == "false" => ExprKind::Bool(false),
            Tok::Ident(w) => {
                let scope = match w.as_str() {
                    "server" => Scope::Server,
                    "task" => Scope::Task,
                    "user" => Scope::User,
                    "client" => Scope::Client,
                    _ => {
                        return Err(self.err(
                            t.start,
                            format!("unknown name '{w}'; expected server.X, task.X, user.X or client.X, a number, a string, true or false"),
                        ))
                    }
                };
                let dot = self.bump();
                if dot.kind != Tok::Dot {
                    return Err(self.err(
                        dot.start,
                        format!(
                            "expected '.' and an attribute name after '{w}', found {}",
                            dot.kind.describe()
                        ),
                    ));
                }
                let name = self.bump();
                let Tok::Ident(attr) = name.kind else {
                    return Err(self.err(
                        name.start,
                        format!(
                            "expected an attribute name after '{w}.', found {}",
                            name.kind.describe()
                        ),
                    ));
                };
                return Ok(Expr {
                    start: t.start,
                    end: name.end,
                    kind: ExprKind::Ref(scope, attr),
                });
            }
            other => {
                return Err(self.err(
                    t.start,
                    format!(
                        "expected a number, a string, an attribute such as server.mem, true, false or '(', found {}",
                        other.describe()
                    ),
                ))
            }
        };
        Ok(Expr {
            start: t.start,
            end: t.end,
            kind,
        })
    }
}

/// Splits an expression at its top-level `&&`s: the clauses that `explain`
/// counts separately.
pub fn conjuncts(e: &Expr) -> Vec<&Expr> {
    let mut out = Vec::new();
    fn walk<'a>(e: &'a Expr, out: &mut Vec<&'a Expr>) {
        if let ExprKind::Binary(BinOp::And, l, r) = &e.kind {
            walk(l, out);
            walk(r, out);
        } else {
            out.push(e);
        }
    }
    walk(e, &mut out);
    out
}

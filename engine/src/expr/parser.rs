//! Recursive-descent parser. Precedence, loosest first: `||`, `&&`,
//! comparisons and `in` (which do not chain), `+ -`, `* /`, unary `! -`.

use super::lexer::{lex, Tok, Token};
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

/// Binary operators.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum BinOp {
    /// `&&`
    And,
    /// `||`
    Or,
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `in`
    In,
}

impl BinOp {
    /// The operator as written.
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::And => "&&",
            BinOp::Or => "||",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::In => "in",
        }
    }

    /// Whether this is one of `== != < <= > >=`.
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge
        )
    }
}

/// Unary operators.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum UnOp {
    /// `!`
    Not,
    /// `-`
    Neg,
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
    let e = p.or()?;
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

    fn or(&mut self) -> Result<Expr, ExprError> {
        let mut l = self.and()?;
        while self.peek().kind == Tok::Or {
            self.bump();
            let r = self.and()?;
            l = Self::binary(BinOp::Or, l, r);
        }
        Ok(l)
    }

    fn and(&mut self) -> Result<Expr, ExprError> {
        let mut l = self.cmp()?;
        while self.peek().kind == Tok::And {
            self.bump();
            let r = self.cmp()?;
            l = Self::binary(BinOp::And, l, r);
        }
        Ok(l)
    }

    fn cmp_op(t: &Tok) -> Option<BinOp> {
        Some(match t {
            Tok::Eq => BinOp::Eq,
            Tok::Ne => BinOp::Ne,
            Tok::Lt => BinOp::Lt,
            Tok::Le => BinOp::Le,
            Tok::Gt => BinOp::Gt,
            Tok::Ge => BinOp::Ge,
            Tok::Ident(w) if w == "in" => BinOp::In,
            _ => return None,
        })
    }

    fn cmp(&mut self) -> Result<Expr, ExprError> {
        let l = self.sum()?;
        let Some(op) = Self::cmp_op(&self.peek().kind) else {
            return Ok(l);
        };
        self.bump();
        let r = self.sum()?;
        let t = self.peek();
        if Self::cmp_op(&t.kind).is_some() {
            return Err(self.err(
                t.start,
                format!(
                    "comparisons do not chain: found {} after a comparison; expected && or || between comparisons",
                    t.kind.describe()
                ),
            ));
        }
        Ok(Self::binary(op, l, r))
    }

    fn sum(&mut self) -> Result<Expr, ExprError> {
        let mut l = self.product()?;
        loop {
            let op = match self.peek().kind {
                Tok::Plus => BinOp::Add,
                Tok::Minus => BinOp::Sub,
                _ => return Ok(l),
            };
            self.bump();
            let r = self.product()?;
            l = Self::binary(op, l, r);
        }
    }

    fn product(&mut self) -> Result<Expr, ExprError> {
        let mut l = self.unary()?;
        loop {
            let op = match self.peek().kind {
                Tok::Star => BinOp::Mul,
                Tok::Slash => BinOp::Div,
                _ => return Ok(l),
            };
            self.bump();
            let r = self.unary()?;
            l = Self::binary(op, l, r);
        }
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
        let op = match t.kind {
            Tok::Not => UnOp::Not,
            Tok::Minus => UnOp::Neg,
            _ => return self.primary(),
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
                let mut e = self.or()?;
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

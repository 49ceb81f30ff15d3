//! The operators of the language, defined once: which exist, how each is
//! spelled, how tightly it binds and whether it chains. The lexer reads the
//! spellings from here, the parser the precedence and associativity, and the
//! AST, the compiler, the evaluator, the SIMD kernels and the score programs
//! all use these types, with the language's rules for NaN.
//!
//! [`Op`] is the whole set. Its parts are enums of their own so that each
//! user matches exactly the operators it can meet: the AST holds a [`BinOp`]
//! or a [`UnOp`] by arity, and the lowered form and the scan kernels hold a
//! [`CmpOp`] or an [`ArOp`], whose matches stay exhaustive and branch no more
//! than the operators they run.

/// Every operator of the language.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// An operator written between two operands.
    Bin(BinOp),
    /// An operator written before one operand.
    Un(UnOp),
}

/// Operators written between two operands.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum BinOp {
    /// `||`
    Or,
    /// `&&`
    And,
    /// `in`: membership of a string in a list.
    In,
    /// A comparison of numbers (or, for `==` and `!=`, strings).
    Cmp(CmpOp),
    /// Arithmetic on numbers.
    Ar(ArOp),
}

/// Operators written before one operand.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum UnOp {
    /// `!`
    Not,
    /// `-`, negation.
    Neg,
}

/// Comparison operators.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum CmpOp {
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
}

/// Arithmetic operators.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ArOp {
    /// `+`
    Add,
    /// `-`, subtraction.
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
}

/// How operators of one precedence level group when written in a row.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Assoc {
    /// `a - b - c` is `(a - b) - c`.
    Left,
    /// `!!x` is `!(!x)`: the prefix operators.
    Right,
    /// `a < b < c` is an error: the comparisons and `in`.
    None,
}

impl Op {
    /// Every operator, in the order the lexer tries their spellings: where
    /// two share one (`-`), the first is what the token reads as, and the
    /// parser takes it for the other by position (see [`Op::prefix`]).
    pub const ALL: [Op; 15] = [
        Op::Bin(BinOp::Or),
        Op::Bin(BinOp::And),
        Op::Bin(BinOp::In),
        Op::Bin(BinOp::Cmp(CmpOp::Eq)),
        Op::Bin(BinOp::Cmp(CmpOp::Ne)),
        Op::Bin(BinOp::Cmp(CmpOp::Lt)),
        Op::Bin(BinOp::Cmp(CmpOp::Le)),
        Op::Bin(BinOp::Cmp(CmpOp::Gt)),
        Op::Bin(BinOp::Cmp(CmpOp::Ge)),
        Op::Bin(BinOp::Ar(ArOp::Add)),
        Op::Bin(BinOp::Ar(ArOp::Sub)),
        Op::Bin(BinOp::Ar(ArOp::Mul)),
        Op::Bin(BinOp::Ar(ArOp::Div)),
        Op::Un(UnOp::Not),
        Op::Un(UnOp::Neg),
    ];

    /// The operator as written.
    pub fn symbol(self) -> &'static str {
        match self {
            Op::Bin(BinOp::Or) => "||",
            Op::Bin(BinOp::And) => "&&",
            Op::Bin(BinOp::In) => "in",
            Op::Bin(BinOp::Cmp(CmpOp::Eq)) => "==",
            Op::Bin(BinOp::Cmp(CmpOp::Ne)) => "!=",
            Op::Bin(BinOp::Cmp(CmpOp::Lt)) => "<",
            Op::Bin(BinOp::Cmp(CmpOp::Le)) => "<=",
            Op::Bin(BinOp::Cmp(CmpOp::Gt)) => ">",
            Op::Bin(BinOp::Cmp(CmpOp::Ge)) => ">=",
            Op::Bin(BinOp::Ar(ArOp::Add)) => "+",
            Op::Bin(BinOp::Ar(ArOp::Sub)) => "-",
            Op::Bin(BinOp::Ar(ArOp::Mul)) => "*",
            Op::Bin(BinOp::Ar(ArOp::Div)) => "/",
            Op::Un(UnOp::Not) => "!",
            Op::Un(UnOp::Neg) => "-",
        }
    }

    /// Whether the operator is spelled as a word. A word is lexed as a
    /// name, since it may also name an attribute (`server.in`); the parser
    /// reads it as the operator only between operands.
    pub fn is_word(self) -> bool {
        self.symbol().starts_with(|c: char| c.is_ascii_alphabetic())
    }

    /// The operator spelled with punctuation that starts `text`, and the
    /// length of its spelling: the longest that matches (`<=` before `<`),
    /// the first of [`Op::ALL`] among equals.
    pub fn lex(text: &str) -> Option<(Op, usize)> {
        let mut best: Option<(Op, usize)> = None;
        for op in Op::ALL {
            let s = op.symbol();
            if !op.is_word() && text.starts_with(s) && best.is_none_or(|(_, n)| s.len() > n) {
                best = Some((op, s.len()));
            }
        }
        best
    }

    /// The operator spelled as the word `w`.
    pub fn word(w: &str) -> Option<Op> {
        Op::ALL
            .into_iter()
            .find(|op| op.is_word() && op.symbol() == w)
    }

    /// Binding strength: higher binds tighter. From the loosest: `||`,
    /// `&&`, comparisons and `in`, `+ -`, `* /`, the prefix `! -`.
    pub fn precedence(self) -> u8 {
        match self {
            Op::Bin(BinOp::Or) => 1,
            Op::Bin(BinOp::And) => 2,
            Op::Bin(BinOp::Cmp(_) | BinOp::In) => 3,
            Op::Bin(BinOp::Ar(ArOp::Add | ArOp::Sub)) => 4,
            Op::Bin(BinOp::Ar(ArOp::Mul | ArOp::Div)) => 5,
            Op::Un(_) => 6,
        }
    }

    /// How a row of operators of this precedence groups.
    pub fn assoc(self) -> Assoc {
        match self {
            Op::Bin(BinOp::Cmp(_) | BinOp::In) => Assoc::None,
            Op::Bin(BinOp::Or | BinOp::And | BinOp::Ar(_)) => Assoc::Left,
            Op::Un(_) => Assoc::Right,
        }
    }

    /// What the operator means before an operand: `-` is negation there,
    /// `!` is itself, and the others are not prefix operators.
    pub fn prefix(self) -> Option<UnOp> {
        match self {
            Op::Un(u) => Some(u),
            Op::Bin(BinOp::Ar(ArOp::Sub)) => Some(UnOp::Neg),
            Op::Bin(_) => None,
        }
    }
}

impl BinOp {
    /// The operator as written.
    pub fn symbol(self) -> &'static str {
        Op::Bin(self).symbol()
    }

    /// See [`Op::precedence`].
    pub fn precedence(self) -> u8 {
        Op::Bin(self).precedence()
    }

    /// See [`Op::assoc`].
    pub fn assoc(self) -> Assoc {
        Op::Bin(self).assoc()
    }
}

impl UnOp {
    /// The operator as written.
    pub fn symbol(self) -> &'static str {
        Op::Un(self).symbol()
    }
}

impl CmpOp {
    /// The operator with its operands swapped (`a < b` is `b > a`).
    pub(crate) fn flip(self) -> CmpOp {
        match self {
            CmpOp::Lt => CmpOp::Gt,
            CmpOp::Le => CmpOp::Ge,
            CmpOp::Gt => CmpOp::Lt,
            CmpOp::Ge => CmpOp::Le,
            o => o,
        }
    }
}

/// Compares two numbers with the language's rule: anything involving NaN is
/// false, `!=` included.
#[inline(always)]
pub(crate) fn cmp_f64(op: CmpOp, a: f64, b: f64) -> bool {
    match op {
        CmpOp::Eq => a == b,
        CmpOp::Ne => a != b && !a.is_nan() && !b.is_nan(),
        CmpOp::Lt => a < b,
        CmpOp::Le => a <= b,
        CmpOp::Gt => a > b,
        CmpOp::Ge => a >= b,
    }
}

impl ArOp {
    #[inline(always)]
    pub(crate) fn apply(self, a: f64, b: f64) -> f64 {
        match self {
            ArOp::Add => a + b,
            ArOp::Sub => a - b,
            ArOp::Mul => a * b,
            ArOp::Div => a / b,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_lexes_back_to_its_operator_or_its_infix_twin() {
        for op in Op::ALL {
            if op.is_word() {
                assert_eq!(Op::word(op.symbol()), Some(op));
                continue;
            }
            let (got, len) = Op::lex(op.symbol()).expect("lexes");
            assert_eq!(len, op.symbol().len());
            if got != op {
                assert_eq!(got.symbol(), op.symbol());
                assert_eq!(got.prefix(), Some(UnOp::Neg));
                assert_eq!(op, Op::Un(UnOp::Neg));
            }
        }
        assert_eq!(Op::lex("<=1"), Some((Op::Bin(BinOp::Cmp(CmpOp::Le)), 2)));
        assert_eq!(Op::lex("!x"), Some((Op::Un(UnOp::Not), 1)));
        assert_eq!(Op::lex("in"), None);
        assert_eq!(Op::word("and"), None);
    }

    #[test]
    fn prefix_operators_bind_tightest_and_only_they_are_right_associative() {
        for op in Op::ALL {
            let prefix = matches!(op, Op::Un(_));
            assert_eq!(op.assoc() == Assoc::Right, prefix, "{op:?}");
            if !prefix {
                assert!(op.precedence() < Op::Un(UnOp::Not).precedence());
            }
        }
    }
}

//! Version negotiation: the first frame on a connection must be a `Hello`
//! with our major version. Anything else gets one `Error` frame back and
//! nothing more is read from that peer.

use crate::error::FrameError;
use crate::frame::{Frame, Validated};
use crate::message::{ErrorCode, ErrorMsg, Hello, Role, Version};

/// The version this build speaks. The major version changes with any
/// archived layout: a field added to a message (here `Assign`'s job,
/// index and user, `StatusReply`'s totals and counters, and in 7.0 its
/// automatic allocation) changes the archived layout, so peers of another
/// major version cannot read each other's frames. The minor version counts
/// additions a peer of the same major may not know (none yet in 7: its
/// `WorkerControl` and reply came with it).
pub const PROTOCOL_VERSION: Version = Version { major: 7, minor: 0 };

/// Where a connection's handshake stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeState {
    /// No `Hello` yet.
    AwaitingHello,
    /// The peer said `Hello` with a compatible version.
    Established {
        /// The role it claimed.
        role: Role,
        /// Its node name.
        name: String,
    },
    /// The peer was refused; nothing more is read from it.
    Rejected,
}

/// The sans-IO handshake of one connection.
#[derive(Debug)]
pub struct Handshake {
    state: HandshakeState,
}

impl Default for Handshake {
    fn default() -> Self {
        Handshake::new()
    }
}

impl Handshake {
    /// A connection that has said nothing yet.
    pub fn new() -> Handshake {
        Handshake {
            state: HandshakeState::AwaitingHello,
        }
    }

    /// The current state.
    pub fn state(&self) -> &HandshakeState {
        &self.state
    }

    /// Takes the peer's first frame. On `Ok` the peer's `Hello` is returned;
    /// on `Err` the caller sends the returned [`ErrorMsg`] and closes, and
    /// every later call also fails.
    pub fn on_frame(&mut self, frame: Frame) -> Result<Validated<Hello>, (FrameError, ErrorMsg)> {
        let result = match self.state {
            HandshakeState::AwaitingHello => accept_hello(frame),
            HandshakeState::Established { .. } => Err(FrameError::UnexpectedKind {
                expected: crate::header::MessageKind::Hello,
                got: frame.kind(),
            }),
            HandshakeState::Rejected => Err(FrameError::Poisoned),
        };
        match result {
            Ok(hello) => {
                let h = hello.get();
                self.state = HandshakeState::Established {
                    role: h.role.to_native(),
                    name: h.name.as_str().to_owned(),
                };
                Ok(hello)
            }
            Err(e) => {
                self.state = HandshakeState::Rejected;
                let msg = ErrorMsg {
                    code: e.code(),
                    message: e.to_string(),
                };
                Err((e, msg))
            }
        }
    }
}

/// Validates a frame as a `Hello` of a compatible version.
pub fn accept_hello(frame: Frame) -> Result<Validated<Hello>, FrameError> {
    let hello = frame.validate::<Hello>()?;
    let v = &hello.get().version;
    let (major, minor) = (v.major.to_native(), v.minor.to_native());
    if major != PROTOCOL_VERSION.major {
        return Err(FrameError::VersionMismatch {
            peer_major: major,
            peer_minor: minor,
            ours_major: PROTOCOL_VERSION.major,
        });
    }
    Ok(hello)
}

/// The `Error` a node sends before it closes a connection it refuses.
pub fn refusal(code: ErrorCode, message: impl Into<String>) -> ErrorMsg {
    ErrorMsg {
        code,
        message: message.into(),
    }
}

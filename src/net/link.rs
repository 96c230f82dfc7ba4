//! The link's security, pure (no I/O, no clock): the clear preamble both ends send first, the
//! Noise `NNpsk0` handshake, the transport that seals every frame after it, and the
//! passphrase's key derivation. `net/conn.rs` moves the bytes; this module decides what they
//! mean. Public for the fuzz targets and the test peers, which speak the same protocol.
//!
//! The construction (ARCHITECTURE.md, "Encryption", says why):
//! - **Preamble** (32 bytes, clear, both ways at once): magic, protocol version, mode (plain,
//!   `encryption = true`, passphrase) and a group tag (16 bytes of a keyed BLAKE3 hash of the
//!   group name, never the name). A mismatch is refused by both ends alike, each knowing why,
//!   before any key is made.
//! - **Handshake** (encrypted modes): `Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s` (the `snow`
//!   crate). Prologue: a label and the preamble (identical on both ends when they match), so
//!   a preamble altered in flight fails the handshake. PSK: the Argon2id-stretched passphrase,
//!   or a public constant for `encryption = true` (which then stops passive listeners only).
//!   Both messages are exactly 48 bytes (an ephemeral key and an empty payload's tag).
//! - **Transport**: Noise `Split()` gives one key per direction; each frame is
//!   `[length of ciphertext + tag, big-endian u32][XChaCha20-Poly1305(payload)][tag]` with the
//!   length header as associated data and a 64-bit counter nonce per direction. After
//!   [`REKEY_BYTES`], [`REKEY_FRAMES`] or [`REKEY_AFTER`] the sender flags a frame in its
//!   (authenticated) header and both ends replace that direction's key after it (Noise's
//!   one-way `Rekey`). Any failure is final: the connection closes.

use std::time::{Duration, Instant};

use snow::params::CipherChoice;
use snow::resolvers::CryptoResolver;
use snow::types::Cipher;
use zeroize::Zeroize;

use crate::proto::{FRAME_HEADER, MAX_FRAME, PROTOCOL_VERSION};
use crate::run::DialError;

/// Bytes of the clear preamble.
pub const PREAMBLE_LEN: usize = 32;
/// Bytes of each handshake message: an X25519 public key and an empty payload's AEAD tag.
pub const HANDSHAKE_LEN: usize = 48;
/// Bytes of the Poly1305 tag after every sealed frame.
pub const TAG_LEN: usize = 16;
/// Largest sealed frame body (the length a header may announce).
pub const MAX_SEALED: usize = MAX_FRAME + TAG_LEN;
/// A responder that could not authenticate the first handshake message sends this instead
/// of the second (all zeros is no valid key), so the initiator can say why it was refused.
/// Anyone on the path could forge it; it only ever ends a connection.
pub const HANDSHAKE_REFUSED: [u8; HANDSHAKE_LEN] = [0; HANDSHAKE_LEN];
/// A direction's key is replaced after this many bytes sealed with it...
pub const REKEY_BYTES: u64 = 64 * 1024 * 1024;
/// ...or this many frames...
pub const REKEY_FRAMES: u64 = 1 << 16;
/// ...or this long, whichever comes first. The replacement is one-way, so whoever takes a
/// node's keys reads none of what was sent before it: at most this long of an idle link.
pub const REKEY_AFTER: Duration = Duration::from_secs(600);
/// Set in a sealed frame's length header (authenticated as associated data): the sender
/// replaces its key after this frame, and so does the receiver. Lengths never reach it.
const REKEY_FLAG: u32 = 1 << 31;
/// Argon2id cost: memory in KiB, passes, lanes. Measured (`make bench`): about 10 ms on an
/// x86_64 core, 60 ms for armv7 under qemu-arm; a Pi Zero's ARM11, with no 64-bit
/// arithmetic and no NEON, is estimated at 0.4–1 s (not measured on one).
pub const KDF_MEMORY_KIB: u32 = 4096;
pub const KDF_PASSES: u32 = 3;
pub const KDF_LANES: u32 = 1;

const MAGIC: &[u8; 8] = b"IRONCARR";
/// The tag byte of a `Hello`, which builds before protocol 4 sent first.
const OLD_HELLO_TAG: u8 = 0x01;
const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
const PROLOGUE_LABEL: &[u8] = b"iron-carrier link v1";

/// How a connection is protected: the `encryption` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Plain,
    Ephemeral,
    Passphrase,
}

impl Mode {
    fn byte(self) -> u8 {
        match self {
            Mode::Plain => 0,
            Mode::Ephemeral => 1,
            Mode::Passphrase => 2,
        }
    }

    fn from_byte(b: u8) -> Option<Mode> {
        match b {
            0 => Some(Mode::Plain),
            1 => Some(Mode::Ephemeral),
            2 => Some(Mode::Passphrase),
            _ => None,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Mode::Plain => "no encryption (encryption = false)",
            Mode::Ephemeral => "encryption without a passphrase (encryption = true)",
            Mode::Passphrase => "a passphrase",
        }
    }
}

/// 32 bytes of key material, wiped when dropped.
#[derive(Clone)]
pub struct Secret([u8; 32]);

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<hidden>)")
    }
}

/// What a node's links need of its config, derived once at start-up.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    pub mode: Mode,
    /// Our group's name, for refusals' messages only (never sent).
    pub group: Option<String>,
    group_tag: [u8; 16],
    /// The handshake's pre-shared key (a public constant for [`Mode::Ephemeral`]).
    psk: Secret,
}

impl LinkConfig {
    /// `passphrase` is stretched here (Argon2id, [`KDF_MEMORY_KIB`]): call once per process.
    pub fn new(mode: Mode, group: Option<&str>, passphrase: Option<&str>) -> Result<Self, String> {
        let psk = match (mode, passphrase) {
            (Mode::Passphrase, Some(p)) => stretch_passphrase(p, group)?,
            (Mode::Passphrase, None) => return Err("a passphrase mode needs a passphrase".into()),
            _ => Secret(blake3::derive_key(
                "iron-carrier link v1 no passphrase",
                b"",
            )),
        };
        Ok(LinkConfig {
            mode,
            group: group.map(str::to_owned),
            group_tag: group_tag(group),
            psk,
        })
    }

    /// This node's preamble.
    pub fn preamble(&self) -> [u8; PREAMBLE_LEN] {
        let mut p = [0u8; PREAMBLE_LEN];
        p[..8].copy_from_slice(MAGIC);
        p[8..12].copy_from_slice(&u32::from(PROTOCOL_VERSION).to_be_bytes());
        p[12] = self.mode.byte();
        p[16..32].copy_from_slice(&self.group_tag);
        p
    }

    /// Compares a peer's preamble with ours. Both ends run this on the same two preambles, so
    /// both refuse, and for the same reason.
    pub fn check_preamble(&self, theirs: &[u8]) -> Result<(), Mismatch> {
        if theirs.len() != PREAMBLE_LEN {
            return Err(Mismatch::NotIronCarrier);
        }
        if theirs[..8] != MAGIC[..] {
            // Builds before protocol 4 open with their `Hello` frame: a length, its tag,
            // the magic and a 16-bit version. Name that version rather than call an older
            // Iron Carrier a stranger.
            if theirs[4] == OLD_HELLO_TAG && theirs[5..13] == MAGIC[..] {
                return Err(Mismatch::Version(u32::from(u16::from_be_bytes([
                    theirs[13], theirs[14],
                ]))));
            }
            return Err(Mismatch::NotIronCarrier);
        }
        let version = u32::from_be_bytes([theirs[8], theirs[9], theirs[10], theirs[11]]);
        if version != u32::from(PROTOCOL_VERSION) {
            return Err(Mismatch::Version(version));
        }
        let Some(mode) = Mode::from_byte(theirs[12]).filter(|_| theirs[13..16] == [0, 0, 0]) else {
            return Err(Mismatch::NotIronCarrier);
        };
        if mode != self.mode {
            return Err(Mismatch::Mode {
                ours: self.mode,
                theirs: mode,
            });
        }
        if theirs[16..32] != self.group_tag {
            return Err(Mismatch::Group);
        }
        Ok(())
    }
}

/// Why a peer's preamble was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// Not our magic: another program, or an Iron Carrier before protocol version 4.
    NotIronCarrier,
    Version(u32),
    Mode {
        ours: Mode,
        theirs: Mode,
    },
    Group,
}

impl Mismatch {
    /// What a refused dial reports; `group` is ours, for the message.
    pub fn dial_error(self, group: Option<&str>) -> DialError {
        match self {
            Mismatch::NotIronCarrier => DialError::NotIronCarrier,
            Mismatch::Version(v) => DialError::OtherVersion(v),
            Mismatch::Mode { ours, theirs } => DialError::EncryptionMismatch {
                ours: ours.describe(),
                theirs: theirs.describe(),
            },
            Mismatch::Group => DialError::OtherGroupTag {
                ours: group.map(str::to_owned),
            },
        }
    }
}

impl LinkError {
    /// What a refused dial reports, when the handshake failed.
    pub fn dial_error(self) -> DialError {
        match self {
            LinkError::Handshake => DialError::WrongPassphrase { by_peer: false },
            LinkError::RefusedByPeer => DialError::WrongPassphrase { by_peer: true },
            other => DialError::BadHandshake(other.to_string()),
        }
    }
}

/// 16 bytes naming a group without revealing it (also what discovery announces).
pub fn group_tag(group: Option<&str>) -> [u8; 16] {
    let k = blake3::derive_key("iron-carrier group tag v1", group.unwrap_or("").as_bytes());
    let mut t = [0u8; 16];
    t.copy_from_slice(&k[..16]);
    t
}

/// Argon2id over the passphrase, salted with the group (both ends must derive the same key,
/// and no salt can be exchanged before the key proves anything). The 4 MiB of working memory
/// are freed (and wiped by the crate) before this returns.
pub fn stretch_passphrase(passphrase: &str, group: Option<&str>) -> Result<Secret, String> {
    let salt = blake3::derive_key(
        "iron-carrier passphrase salt v1",
        group.unwrap_or("").as_bytes(),
    );
    let params = argon2::Params::new(KDF_MEMORY_KIB, KDF_PASSES, KDF_LANES, Some(32))
        .map_err(|e| format!("key derivation parameters: {e}"))?;
    let kdf = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = [0u8; 32];
    kdf.hash_password_into(passphrase.as_bytes(), &salt[..16], &mut out)
        .map_err(|e| format!("key derivation failed: {e}"))?;
    let key = Secret(out);
    out.zeroize();
    Ok(key)
}

/// Why a handshake or a sealed frame was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkError {
    /// The handshake message did not authenticate: another passphrase, or tampering.
    Handshake,
    /// The responder said it could not authenticate our first message.
    RefusedByPeer,
    /// A sealed frame's length header is out of bounds.
    BadLength(usize),
    /// A sealed frame did not authenticate (altered, replayed, reflected, or out of order).
    Forged,
    /// A direction's nonces are used up (2^64 frames; never in practice).
    Exhausted,
    /// The Noise library failed in a way that is not the peer's doing.
    Internal(String),
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Handshake => f.write_str(
                "handshake failed: the peer does not know our passphrase \
                 (or the handshake was altered on the way)",
            ),
            LinkError::RefusedByPeer => f.write_str(
                "handshake refused by the peer: it does not know our passphrase \
                 (or the handshake was altered on the way)",
            ),
            LinkError::BadLength(n) => write!(f, "sealed frame of {n} bytes is out of bounds"),
            LinkError::Forged => f.write_str("a frame failed authentication"),
            LinkError::Exhausted => f.write_str("nonces exhausted"),
            LinkError::Internal(e) => write!(f, "handshake error: {e}"),
        }
    }
}

/// A handshake under way: the initiator waits for the second message, the responder for
/// the first.
pub struct Handshake {
    state: Box<snow::HandshakeState>,
}

fn builder() -> Result<snow::Builder<'static>, LinkError> {
    let params = NOISE_PARAMS
        .parse()
        .map_err(|e: snow::Error| LinkError::Internal(e.to_string()))?;
    Ok(snow::Builder::new(params))
}

fn prologue(cfg: &LinkConfig) -> Vec<u8> {
    let mut p = PROLOGUE_LABEL.to_vec();
    p.extend_from_slice(&cfg.preamble());
    p
}

fn internal(e: snow::Error) -> LinkError {
    LinkError::Internal(e.to_string())
}

impl Handshake {
    /// The dialling side: its state and the first message.
    pub fn initiate(cfg: &LinkConfig) -> Result<(Handshake, [u8; HANDSHAKE_LEN]), LinkError> {
        let prologue = prologue(cfg);
        let mut state = builder()?
            .prologue(&prologue)
            .and_then(|b| b.psk(0, &cfg.psk.0))
            .and_then(|b| b.build_initiator())
            .map_err(internal)?;
        let mut msg = [0u8; HANDSHAKE_LEN];
        let n = state.write_message(&[], &mut msg).map_err(internal)?;
        if n != HANDSHAKE_LEN {
            return Err(LinkError::Internal(format!("first message of {n} bytes")));
        }
        Ok((
            Handshake {
                state: Box::new(state),
            },
            msg,
        ))
    }

    /// The accepting side, before the first message.
    pub fn respond(cfg: &LinkConfig) -> Result<Handshake, LinkError> {
        let prologue = prologue(cfg);
        let state = builder()?
            .prologue(&prologue)
            .and_then(|b| b.psk(0, &cfg.psk.0))
            .and_then(|b| b.build_responder())
            .map_err(internal)?;
        Ok(Handshake {
            state: Box::new(state),
        })
    }

    /// Responder: takes the first message, returns the second and the transport.
    pub fn accept(mut self, msg: &[u8]) -> Result<([u8; HANDSHAKE_LEN], Transport), LinkError> {
        if msg.len() != HANDSHAKE_LEN || self.state.is_initiator() {
            return Err(LinkError::Handshake);
        }
        let mut payload = [0u8; HANDSHAKE_LEN];
        match self.state.read_message(msg, &mut payload) {
            Ok(0) => {}
            _ => return Err(LinkError::Handshake),
        }
        let mut reply = [0u8; HANDSHAKE_LEN];
        let n = self
            .state
            .write_message(&[], &mut reply)
            .map_err(internal)?;
        if n != HANDSHAKE_LEN {
            return Err(LinkError::Internal(format!("second message of {n} bytes")));
        }
        let transport = self.split()?;
        Ok((reply, transport))
    }

    /// Initiator: takes the second message and returns the transport.
    pub fn finish(mut self, msg: &[u8]) -> Result<Transport, LinkError> {
        if msg == HANDSHAKE_REFUSED {
            return Err(LinkError::RefusedByPeer);
        }
        if msg.len() != HANDSHAKE_LEN || !self.state.is_initiator() {
            return Err(LinkError::Handshake);
        }
        let mut payload = [0u8; HANDSHAKE_LEN];
        match self.state.read_message(msg, &mut payload) {
            Ok(0) => {}
            _ => return Err(LinkError::Handshake),
        }
        self.split()
    }

    fn split(&mut self) -> Result<Transport, LinkError> {
        if !self.state.is_handshake_finished() {
            return Err(LinkError::Internal("handshake not finished".into()));
        }
        let (mut i2r, mut r2i) = self.state.dangerously_get_raw_split();
        let made = if self.state.is_initiator() {
            Direction::new(&i2r).and_then(|tx| Ok((tx, Direction::new(&r2i)?)))
        } else {
            Direction::new(&r2i).and_then(|tx| Ok((tx, Direction::new(&i2r)?)))
        };
        i2r.zeroize();
        r2i.zeroize();
        let (tx, rx) = made?;
        Ok(Transport { tx, rx })
    }
}

/// One direction of a transport: its cipher, its next nonce, what was sealed since the last
/// key.
///
/// The cipher is snow's XChaCha20-Poly1305 (`snow::types::Cipher`), not a use of the
/// `chacha20poly1305` crate here: its generic code is instantiated in the crate that calls
/// it, and snow is built at opt-level 3 while this crate is built for size. Sealing with the
/// same primitive instantiated here ran at 315 MiB/s, through snow at 565 (x86_64).
struct Direction {
    cipher: Box<dyn Cipher>,
    nonce: u64,
    bytes: u64,
    frames: u64,
    /// Sending direction: when the key was first used (the receiver follows the flag and
    /// keeps no clock).
    since: Option<Instant>,
    /// How many times the key was replaced (the tests check both ends agree).
    generation: u64,
}

impl Drop for Direction {
    fn drop(&mut self) {
        // snow's cipher keeps its key in a plain array: overwrite it before it is freed.
        self.cipher.set(&[0u8; 32]);
    }
}

impl Direction {
    fn new(key: &[u8; 32]) -> Result<Direction, LinkError> {
        let mut cipher = snow::resolvers::DefaultResolver
            .resolve_cipher(&CipherChoice::XChaChaPoly)
            .ok_or_else(|| LinkError::Internal("no XChaCha20-Poly1305 in this build".into()))?;
        cipher.set(key);
        Ok(Direction {
            cipher,
            nonce: 0,
            bytes: 0,
            frames: 0,
            since: None,
            generation: 0,
        })
    }

    /// Whether the frame of `len` sealed bytes about to be sealed at `now` is the key's last.
    fn due(&self, len: usize, now: Instant) -> bool {
        self.bytes + len as u64 >= REKEY_BYTES
            || self.frames + 1 >= REKEY_FRAMES
            || self
                .since
                .is_some_and(|t| now.saturating_duration_since(t) >= REKEY_AFTER)
    }

    /// Counts a frame just sealed or opened and, if it carried the flag, replaces the key.
    fn used(&mut self, len: usize, rekey: bool) -> Result<(), LinkError> {
        // The largest nonce is the rekey's own (Noise), never a frame's.
        if self.nonce >= u64::MAX - 1 {
            return Err(LinkError::Exhausted);
        }
        self.nonce += 1;
        self.bytes += len as u64;
        self.frames += 1;
        if rekey {
            // Noise's Rekey(): the first 32 bytes of encrypting zeros under the largest
            // nonce, which the counter never reaches.
            self.cipher.rekey();
            self.bytes = 0;
            self.frames = 0;
            self.since = None;
            self.generation += 1;
        }
        Ok(())
    }
}

/// The two directions of an established link.
pub struct Transport {
    tx: Direction,
    rx: Direction,
}

impl Transport {
    /// Appends the plain frame `plain` (`[len][payload]`, as `proto::encode_frame` writes
    /// it) to `out`, sealed: the header becomes the sealed length (with the rekey flag when
    /// this frame is the key's last, by data or by `now`), then the ciphertext and the tag.
    pub fn seal_into(
        &mut self,
        plain: &[u8],
        out: &mut Vec<u8>,
        now: Instant,
    ) -> Result<(), LinkError> {
        let Some(body) = plain.get(FRAME_HEADER..).filter(|b| !b.is_empty()) else {
            return Err(LinkError::BadLength(plain.len()));
        };
        let sealed = body.len() + TAG_LEN;
        if sealed > MAX_SEALED {
            return Err(LinkError::BadLength(sealed));
        }
        let tx = &mut self.tx;
        let rekey = tx.due(sealed, now);
        let flag = if rekey { REKEY_FLAG } else { 0 };
        let header = (sealed as u32 | flag).to_be_bytes();
        let start = out.len();
        out.extend_from_slice(&header);
        out.resize(start + FRAME_HEADER + sealed, 0);
        let n = tx
            .cipher
            .encrypt(tx.nonce, &header, body, &mut out[start + FRAME_HEADER..]);
        if n != sealed {
            out.truncate(start);
            return Err(LinkError::Internal(format!("sealed {n} bytes of {sealed}")));
        }
        // The key's clock starts at its first frame (a rekey stops it again).
        tx.since.get_or_insert(now);
        tx.used(sealed, rekey)
    }

    /// Seals the plain frame at `buf[start..]` in place (it moves once, into the ciphertext).
    pub fn seal(&mut self, buf: &mut Vec<u8>, start: usize, now: Instant) -> Result<(), LinkError> {
        let plain = buf.split_off(start);
        self.seal_into(&plain, buf, now)
    }

    /// The sealed length a frame header announces, checked before anything is allocated.
    pub fn sealed_len(header: [u8; FRAME_HEADER]) -> Result<usize, LinkError> {
        let len = (u32::from_be_bytes(header) & !REKEY_FLAG) as usize;
        if !(TAG_LEN + 1..=MAX_SEALED).contains(&len) {
            return Err(LinkError::BadLength(len));
        }
        Ok(len)
    }

    /// Opens one whole sealed frame (`[len][ciphertext][tag]`) into `plain`, which then
    /// holds the payload alone. On failure nothing advances: the connection is to be closed.
    pub fn open(&mut self, frame: &[u8], plain: &mut Vec<u8>) -> Result<(), LinkError> {
        let Some((header, rest)) = frame.split_first_chunk::<FRAME_HEADER>() else {
            return Err(LinkError::BadLength(frame.len()));
        };
        let len = Self::sealed_len(*header)?;
        if rest.len() != len {
            return Err(LinkError::BadLength(rest.len()));
        }
        let rekey = u32::from_be_bytes(*header) & REKEY_FLAG != 0;
        plain.clear();
        plain.resize(len - TAG_LEN, 0);
        let rx = &mut self.rx;
        match rx.cipher.decrypt(rx.nonce, header, rest, plain) {
            Ok(n) if n == len - TAG_LEN => {}
            _ => {
                plain.clear();
                return Err(LinkError::Forged);
            }
        }
        rx.used(len, rekey)
    }
}

#[cfg(test)]
mod tests;

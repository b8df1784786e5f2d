//! Token formats and cryptography: access tokens (JWT), refresh tokens (opaque,
//! hashed, sealed successors) and the signing keys behind the JWKS.

pub mod access;
pub mod keys;
pub mod refresh;

use rand::TryRng;
use rand::rngs::SysRng;

/// Bytes from the operating system's CSPRNG.
///
/// A failing OS random source leaves nothing safe to do, so this is the one place
/// allowed to stop the process rather than hand out predictable secrets.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    #[allow(clippy::panic)]
    if let Err(e) = SysRng.try_fill_bytes(&mut buf) {
        panic!("the operating system's random source failed: {e}");
    }
    buf
}

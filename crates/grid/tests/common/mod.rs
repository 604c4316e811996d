//! What the grid crate's tests share: two users' keys and roots to bind.

use venti::Score;

pub const KEY_A: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHZ6dDrh0mG5t0u4Cv8gxT1xAG7Q0v2sE7VZ2Yy3a1xQ";
pub const KEY_B: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOyNNwq9+hIm1gKzk6m2dU5Jd9O0v0Kx7sH2dWcA3T1Y";

/// A root score to bind (any score does: names do not read blocks).
pub fn root(n: u8) -> Score {
    Score::of(&[n; 10])
}

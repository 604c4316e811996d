//! Hex text to bytes, for test vectors and command-line input: whitespace is
//! ignored, so the spec's spaced-out captures can be pasted as they are.

/// Decodes hex digits (either case), skipping whitespace; `None` for anything
/// else or an odd number of digits.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            Some((hi * 16 + lo) as u8)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn decodes_spaced_hex() {
        assert_eq!(super::decode("0a FF\n10"), Some(vec![0x0a, 0xff, 0x10]));
        assert_eq!(super::decode("abc"), None);
        assert_eq!(super::decode("zz"), None);
    }
}

//! The shared framing under any input: whatever a peer sends, reading it
//! never panics and never reserves room for more than was sent, and what a
//! writer wrote reads back field for field.

use frames::{Reader, Writer};
use proptest::prelude::*;
use venti::Score;

/// One field of a frame, to write and then read back.
#[derive(Debug, Clone, PartialEq)]
enum Field {
    U8(u8),
    Flag(bool),
    U32(u32),
    U64(u64),
    Text(String),
    Texts(Vec<String>),
    Score([u8; 20]),
}

fn field() -> impl Strategy<Value = Field> {
    prop_oneof![
        any::<u8>().prop_map(Field::U8),
        any::<bool>().prop_map(Field::Flag),
        any::<u32>().prop_map(Field::U32),
        any::<u64>().prop_map(Field::U64),
        ".{0,40}".prop_map(Field::Text),
        proptest::collection::vec(".{0,10}", 0..6).prop_map(Field::Texts),
        any::<[u8; 20]>().prop_map(Field::Score),
    ]
}

fn write(w: &mut Writer, f: &Field) {
    match f {
        Field::U8(v) => w.u8(*v),
        Field::Flag(v) => w.flag(*v),
        Field::U32(v) => w.u32(*v),
        Field::U64(v) => w.u64(*v),
        Field::Text(t) => w.text(t),
        Field::Texts(t) => w.texts(t),
        Field::Score(s) => w.score(&Score(*s)),
    }
}

/// Reads a field of the same shape as `like`.
fn read(r: &mut Reader, like: &Field) -> Result<Field, frames::Malformed> {
    Ok(match like {
        Field::U8(_) => Field::U8(r.u8()?),
        Field::Flag(_) => Field::Flag(r.flag()?),
        Field::U32(_) => Field::U32(r.u32()?),
        Field::U64(_) => Field::U64(r.u64()?),
        Field::Text(_) => Field::Text(r.text()?),
        Field::Texts(_) => Field::Texts(r.texts()?),
        Field::Score(_) => Field::Score(r.score()?.0),
    })
}

proptest! {
    #[test]
    fn what_is_written_reads_back_and_the_length_counts_the_body(
        fields in proptest::collection::vec(field(), 0..12)
    ) {
        let mut w = Writer::new();
        for f in &fields {
            write(&mut w, f);
        }
        let frame = w.finish();
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        prop_assert_eq!(len, frame.len() - 4);
        let mut r = Reader::new(&frame[4..], "test", 16);
        for f in &fields {
            prop_assert_eq!(&read(&mut r, f).unwrap(), f);
        }
        prop_assert_eq!(r.left(), 0);
    }

    /// Any bytes read as any fields: an error or a value, never a panic,
    /// and every error names the protocol.
    #[test]
    fn any_bytes_read_as_any_fields_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
        shapes in proptest::collection::vec(field(), 1..12),
    ) {
        let mut r = Reader::new(&bytes, "test", 16);
        for shape in &shapes {
            match read(&mut r, shape) {
                Ok(_) => {}
                Err(e) => {
                    prop_assert!(e.to_string().starts_with("malformed test frame: "));
                    break;
                }
            }
        }
    }
}

#[test]
fn a_forged_count_is_refused_before_anything_is_reserved() {
    // A list of a billion texts in eight bytes.
    let mut body = 1_000_000_000u32.to_be_bytes().to_vec();
    body.extend_from_slice(&[0; 4]);
    let err = Reader::new(&body, "test", usize::MAX).texts().unwrap_err();
    assert!(
        err.to_string().contains("cannot fit in the 4 bytes left"),
        "{err}"
    );
    // Over the protocol's limit, however much follows.
    let mut body = 17u32.to_be_bytes().to_vec();
    body.extend_from_slice(&[0; 17 * 4]);
    let err = Reader::new(&body, "test", 16).texts().unwrap_err();
    assert!(err.to_string().contains("exceed the limit of 16"), "{err}");
    let err = Reader::new(&[2], "test", 16).flag().unwrap_err();
    assert!(err.to_string().contains("neither 0 nor 1"), "{err}");
}

#[tokio::test]
async fn a_frame_of_no_bytes_or_over_the_limit_is_refused_and_a_short_one_is_an_eof() {
    let mut empty: &[u8] = &[0, 0, 0, 0];
    let err = frames::read_body(&mut empty, "test", 64).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("a frame of 0 bytes"), "{err}");
    let mut huge: &[u8] = &[0xff, 0xff, 0xff, 0xff, 1];
    let err = frames::read_body(&mut huge, "test", 64).await.unwrap_err();
    assert!(err.to_string().contains("the limit is 64"), "{err}");
    let mut cut: &[u8] = &[0, 0, 0, 9, 1, 2];
    let err = frames::read_body(&mut cut, "test", 64).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    let mut w = Writer::new();
    w.u8(7);
    w.text("hello");
    let mut whole: &[u8] = &w.finish();
    let body = frames::read_body(&mut whole, "test", 64).await.unwrap();
    assert_eq!(body, [&[7u8, 0, 0, 0, 5][..], b"hello"].concat());
}

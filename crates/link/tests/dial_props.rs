//! Dial strings come from users and config files: any string is an address
//! or a clear error, never a panic, and a tls! address is a tcp! one with
//! another transport.

use link::dial::{Transport, parse, parse_transport};
use proptest::prelude::*;

proptest! {
    #[test]
    fn any_string_parses_or_is_refused(addr in "\\PC{0,40}") {
        let _ = parse(&addr);
        let _ = parse_transport(&addr);
    }

    #[test]
    fn tls_addresses_are_tcp_addresses_with_tls(host in "[a-z0-9.]{1,20}", port in any::<u16>()) {
        let tcp = parse(&format!("tcp!{host}!{port}"));
        let tls = parse_transport(&format!("tls!{host}!{port}"));
        match (tcp, tls) {
            (Ok(a), Ok((Transport::Tls, b))) => prop_assert_eq!(a, b),
            (Err(_), Err(_)) => {}
            (a, b) => prop_assert!(false, "tcp {:?} but tls {:?}", a, b),
        }
    }
}

//! Building blocks of the `pptp-peer` test tool.

pub mod client;
pub mod ctl;
pub mod gre;
pub mod msg;
pub mod raw;
pub mod server;
pub mod spray;

/// Parses a u16 given in decimal or with a `0x` prefix in hex (Call IDs are
/// usually written in hex in captures, in decimal elsewhere).
pub fn parse_u16(s: &str) -> Result<u16, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u16::from_str_radix(hex, 16),
        None => s.parse::<u16>(),
    };
    r.map_err(|e| format!("{s:?} is not a 16-bit number: {e}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parse_u16_accepts_decimal_and_hex() {
        assert_eq!(super::parse_u16("256"), Ok(256));
        assert_eq!(super::parse_u16("0x100"), Ok(256));
        assert!(super::parse_u16("0x10000").is_err());
        assert!(super::parse_u16("x").is_err());
    }
}

//! Message numbers (RFC 4250 §4.1, RFC 8308, RFC 4252, RFC 4254).

pub const DISCONNECT: u8 = 1;
pub const IGNORE: u8 = 2;
pub const UNIMPLEMENTED: u8 = 3;
pub const DEBUG: u8 = 4;
pub const SERVICE_REQUEST: u8 = 5;
pub const SERVICE_ACCEPT: u8 = 6;
pub const EXT_INFO: u8 = 7;
pub const KEXINIT: u8 = 20;
pub const NEWKEYS: u8 = 21;
pub const KEX_ECDH_INIT: u8 = 30;
pub const KEX_ECDH_REPLY: u8 = 31;
pub const USERAUTH_REQUEST: u8 = 50;
pub const USERAUTH_FAILURE: u8 = 51;
pub const USERAUTH_SUCCESS: u8 = 52;
pub const USERAUTH_BANNER: u8 = 53;
pub const USERAUTH_PK_OK: u8 = 60;
pub const GLOBAL_REQUEST: u8 = 80;
pub const REQUEST_SUCCESS: u8 = 81;
pub const REQUEST_FAILURE: u8 = 82;
pub const CHANNEL_OPEN: u8 = 90;
pub const CHANNEL_OPEN_CONFIRMATION: u8 = 91;
pub const CHANNEL_OPEN_FAILURE: u8 = 92;
pub const CHANNEL_WINDOW_ADJUST: u8 = 93;
pub const CHANNEL_DATA: u8 = 94;
pub const CHANNEL_EXTENDED_DATA: u8 = 95;
pub const CHANNEL_EOF: u8 = 96;
pub const CHANNEL_CLOSE: u8 = 97;
pub const CHANNEL_REQUEST: u8 = 98;
pub const CHANNEL_SUCCESS: u8 = 99;
pub const CHANNEL_FAILURE: u8 = 100;

/// Disconnect reasons.
pub const DISCONNECT_PROTOCOL_ERROR: u32 = 2;
pub const DISCONNECT_KEY_EXCHANGE_FAILED: u32 = 3;
pub const DISCONNECT_MAC_ERROR: u32 = 5;
pub const DISCONNECT_SERVICE_NOT_AVAILABLE: u32 = 7;
pub const DISCONNECT_HOST_KEY_NOT_VERIFIABLE: u32 = 9;
pub const DISCONNECT_BY_APPLICATION: u32 = 11;
pub const DISCONNECT_NO_MORE_AUTH_METHODS: u32 = 14;

/// Channel open failure reasons.
pub const OPEN_ADMINISTRATIVELY_PROHIBITED: u32 = 1;
pub const OPEN_CONNECT_FAILED: u32 = 2;
pub const OPEN_UNKNOWN_CHANNEL_TYPE: u32 = 3;
pub const OPEN_RESOURCE_SHORTAGE: u32 = 4;

/// Whether a message belongs to the key exchange (allowed while one is running).
pub fn is_kex(n: u8) -> bool {
    matches!(n, KEXINIT | NEWKEYS | KEX_ECDH_INIT | KEX_ECDH_REPLY)
}

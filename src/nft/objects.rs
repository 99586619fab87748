//! Netlink messages for tables, sets, maps and their elements that the `nftnl` crate cannot
//! express: tables added with NLM_F_EXCL, sets and maps (data type, typeof user data,
//! per-element counters), concatenated keys, and element add/delete/flush.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::ptr::NonNull;

use nftnl::{MsgType, NlMsg};
use nftnl_sys::{self as sys, libc};

use super::expr::counter;
use super::NftError;

const FAMILY_IP: u16 = libc::NFPROTO_IPV4 as u16;

fn alloc<T>(p: *mut T) -> NonNull<T> {
    match NonNull::new(p) {
        Some(p) => p,
        // Same policy as std and the nftnl crate: out of memory aborts.
        None => std::process::abort(),
    }
}

/// Writes the nlmsghdr + nfgenmsg of an nf_tables message.
///
/// # Safety
/// `buf` must have room for `nft_nlmsg_maxsize()` bytes.
unsafe fn header(buf: *mut c_void, ty: i32, flags: i32, seq: u32) -> *mut libc::nlmsghdr {
    // SAFETY: guaranteed by the caller.
    unsafe {
        sys::nftnl_nlmsg_build_hdr(
            buf.cast::<c_char>(),
            ty as u16,
            FAMILY_IP,
            flags as u16,
            seq,
        )
    }
}

/// `NFT_TABLE_F_OWNER` from linux/netfilter/nf_tables.h (kernel >= 5.12): the table belongs to
/// the netlink socket that created it. Only that socket may change it, `flush ruleset` from any
/// other skips it, and the kernel deletes it when the socket closes.
pub const NFT_TABLE_F_OWNER: u32 = 0x2;

/// An `ip` family table.
pub struct TableMsg {
    name: CString,
    /// Fail with EEXIST instead of reusing a table of the same name.
    exclusive: bool,
    /// Create it with [`NFT_TABLE_F_OWNER`]. Without, no flags attribute is sent, so an "add"
    /// of an existing table (owned or not) changes nothing.
    owned: bool,
}

impl TableMsg {
    /// A table message; `exclusive` makes "add" fail if the table already exists.
    pub fn new(name: &CStr, exclusive: bool) -> Self {
        TableMsg {
            name: name.to_owned(),
            exclusive,
            owned: false,
        }
    }

    /// An "add" that creates the table owned by the sending socket.
    pub fn owned(name: &CStr) -> Self {
        TableMsg {
            owned: true,
            ..Self::new(name, false)
        }
    }
}

unsafe impl NlMsg for TableMsg {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, msg_type: MsgType) {
        let (ty, flags) = match msg_type {
            MsgType::Add if self.exclusive => (
                libc::NFT_MSG_NEWTABLE,
                libc::NLM_F_CREATE | libc::NLM_F_EXCL | libc::NLM_F_ACK,
            ),
            MsgType::Add => (libc::NFT_MSG_NEWTABLE, libc::NLM_F_CREATE | libc::NLM_F_ACK),
            MsgType::Del => (libc::NFT_MSG_DELTABLE, libc::NLM_F_ACK),
        };
        // SAFETY: the caller of write() guarantees the buffer size; the table object is ours.
        unsafe {
            let t = alloc(sys::nftnl_table_alloc()).as_ptr();
            sys::nftnl_table_set_u32(t, sys::NFTNL_TABLE_FAMILY as u16, u32::from(FAMILY_IP));
            sys::nftnl_table_set_str(t, sys::NFTNL_TABLE_NAME as u16, self.name.as_ptr());
            if self.owned && msg_type == MsgType::Add {
                sys::nftnl_table_set_u32(t, sys::NFTNL_TABLE_FLAGS as u16, NFT_TABLE_F_OWNER);
            }
            sys::nftnl_table_nlmsg_build_payload(header(buf, ty, flags, seq), t);
            sys::nftnl_table_free(t);
        }
    }
}

/// Builds a GETTABLE request for one table (answered with the table or ENOENT).
pub fn get_table(name: &CStr) -> impl FnOnce(&mut [u8], u32) + '_ {
    move |buf, seq| {
        // SAFETY: `buf` has nft_nlmsg_maxsize() bytes (see Netlink::request).
        unsafe {
            let t = alloc(sys::nftnl_table_alloc()).as_ptr();
            sys::nftnl_table_set_u32(t, sys::NFTNL_TABLE_FAMILY as u16, u32::from(FAMILY_IP));
            sys::nftnl_table_set_str(t, sys::NFTNL_TABLE_NAME as u16, name.as_ptr());
            let h = header(
                buf.as_mut_ptr().cast(),
                libc::NFT_MSG_GETTABLE,
                libc::NLM_F_ACK,
                seq,
            );
            sys::nftnl_table_nlmsg_build_payload(h, t);
            sys::nftnl_table_free(t);
        }
    }
}

/// The owner of a table as a GETTABLE answer tells it: `Some(port id)` of the owning netlink
/// socket when the table has the owner flag, `None` when anyone may change it.
pub fn table_owner(raw: &[u8]) -> Result<Option<u32>, NftError> {
    // SAFETY: `raw` is one complete netlink message; the table object is ours and freed here.
    unsafe {
        let t = alloc(sys::nftnl_table_alloc()).as_ptr();
        if sys::nftnl_table_nlmsg_parse(raw.as_ptr().cast(), t) < 0 {
            sys::nftnl_table_free(t);
            return Err(NftError::Protocol("cannot parse a table".into()));
        }
        let flags = sys::nftnl_table_get_u32(t, sys::NFTNL_TABLE_FLAGS as u16);
        let owner = (flags & NFT_TABLE_F_OWNER != 0
            && sys::nftnl_table_is_set(t, sys::NFTNL_TABLE_OWNER as u16))
        .then(|| sys::nftnl_table_get_u32(t, sys::NFTNL_TABLE_OWNER as u16));
        sys::nftnl_table_free(t);
        Ok(owner)
    }
}

/// The handle of a table as a GETTABLE answer tells it: a table deleted and created again
/// (a `flush ruleset` and a restore) has a new one.
pub fn table_handle(raw: &[u8]) -> Result<u64, NftError> {
    // SAFETY: `raw` is one complete netlink message; the table object is ours and freed here.
    unsafe {
        let t = alloc(sys::nftnl_table_alloc()).as_ptr();
        if sys::nftnl_table_nlmsg_parse(raw.as_ptr().cast(), t) < 0 {
            sys::nftnl_table_free(t);
            return Err(NftError::Protocol("cannot parse a table".into()));
        }
        let h = sys::nftnl_table_get_u64(t, sys::NFTNL_TABLE_HANDLE as u16);
        sys::nftnl_table_free(t);
        Ok(h)
    }
}

/// Builds a GETSET request for one set (answered with the set or ENOENT).
pub fn get_set<'a>(table: &'a CStr, set: &'a CStr) -> impl FnOnce(&mut [u8], u32) + 'a {
    set_request(table, set, libc::NFT_MSG_GETSET, libc::NLM_F_ACK, Part::Set)
}

/// Builds a dump request for all elements of one set.
pub fn dump_elems<'a>(table: &'a CStr, set: &'a CStr) -> impl FnOnce(&mut [u8], u32) + 'a {
    set_request(
        table,
        set,
        libc::NFT_MSG_GETSETELEM,
        libc::NLM_F_DUMP,
        Part::Elems,
    )
}

/// Builds a GETSETELEM request for one element of a set or map (answered with the element,
/// its counter included, or ENOENT): one call's counters without dumping the whole map.
pub fn get_elem<'a>(
    table: &'a CStr,
    set: &'a CStr,
    key: &'a [u8],
) -> impl FnOnce(&mut [u8], u32) + 'a {
    set_request(
        table,
        set,
        libc::NFT_MSG_GETSETELEM,
        libc::NLM_F_ACK,
        Part::Elem(key),
    )
}

/// Calls `f` with every element of one GETSETELEM answer (a part of a dump, or the one
/// element asked for).
pub fn for_each_elem<F: FnMut(*mut sys::nftnl_set_elem)>(
    raw: &[u8],
    mut f: F,
) -> Result<(), NftError> {
    unsafe extern "C" fn each<G: FnMut(*mut sys::nftnl_set_elem)>(
        e: *mut sys::nftnl_set_elem,
        data: *mut c_void,
    ) -> c_int {
        // SAFETY: `data` is the `&mut F` passed below, alive for the whole foreach.
        unsafe { (*data.cast::<G>())(e) };
        0
    }
    // SAFETY: `raw` is one complete netlink message; libnftnl copies what it parses into the
    // set, which we own and free. Element pointers are only used while the set lives.
    unsafe {
        let s = alloc(sys::nftnl_set_alloc()).as_ptr();
        if sys::nftnl_set_elems_nlmsg_parse(raw.as_ptr().cast(), s) < 0 {
            sys::nftnl_set_free(s);
            return Err(NftError::Protocol("cannot parse a set element dump".into()));
        }
        sys::nftnl_set_elem_foreach(s, Some(each::<F>), (&mut f as *mut F).cast());
        sys::nftnl_set_free(s);
    }
    Ok(())
}

/// The key of an element given to a [`for_each_elem`] callback.
///
/// # Safety
///
/// `e` must be a valid element; the slice lives as long as the element.
pub unsafe fn elem_key<'e>(e: *mut sys::nftnl_set_elem) -> Option<&'e [u8]> {
    let mut len = 0u32;
    // SAFETY: per the contract, `e` is valid; libnftnl returns its own copy of the key.
    unsafe {
        let k = sys::nftnl_set_elem_get(e, sys::NFTNL_SET_ELEM_KEY as u16, &mut len);
        (!k.is_null()).then(|| std::slice::from_raw_parts(k.cast::<u8>(), len as usize))
    }
}

/// What of a set a request names.
#[derive(Clone, Copy)]
enum Part<'a> {
    /// The set itself.
    Set,
    /// All its elements.
    Elems,
    /// The element with this key.
    Elem(&'a [u8]),
}

/// A request naming one set of our family, or elements of it.
fn set_request<'a>(
    table: &'a CStr,
    set: &'a CStr,
    msg: i32,
    flags: i32,
    part: Part<'a>,
) -> impl FnOnce(&mut [u8], u32) + 'a {
    move |buf, seq| {
        // SAFETY: as in get_table; the set and its element are ours and freed here.
        unsafe {
            let s = alloc(sys::nftnl_set_alloc()).as_ptr();
            sys::nftnl_set_set_u32(s, sys::NFTNL_SET_FAMILY as u16, u32::from(FAMILY_IP));
            sys::nftnl_set_set_str(s, sys::NFTNL_SET_TABLE as u16, table.as_ptr());
            sys::nftnl_set_set_str(s, sys::NFTNL_SET_NAME as u16, set.as_ptr());
            if let Part::Elem(key) = part {
                let e = alloc(sys::nftnl_set_elem_alloc()).as_ptr();
                sys::nftnl_set_elem_set(
                    e,
                    sys::NFTNL_SET_ELEM_KEY as u16,
                    key.as_ptr().cast(),
                    key.len() as u32,
                );
                sys::nftnl_set_elem_add(s, e);
            }
            let h = header(buf.as_mut_ptr().cast(), msg, flags, seq);
            match part {
                Part::Set => sys::nftnl_set_nlmsg_build_payload(h, s),
                Part::Elems | Part::Elem(_) => sys::nftnl_set_elems_nlmsg_build_payload(h, s),
            }
            sys::nftnl_set_free(s);
        }
    }
}

/// Builds a dump request for every stateful object of `obj_type` in every table and family.
pub fn dump_objects(obj_type: u32) -> impl FnOnce(&mut [u8], u32) {
    move |buf, seq| {
        // SAFETY: as in get_table.
        unsafe {
            let o = alloc(sys::nftnl_obj_alloc()).as_ptr();
            sys::nftnl_obj_set_u32(o, sys::NFTNL_OBJ_TYPE as u16, obj_type);
            let h = sys::nftnl_nlmsg_build_hdr(
                buf.as_mut_ptr().cast(),
                libc::NFT_MSG_GETOBJ as u16,
                libc::NFPROTO_UNSPEC as u16,
                libc::NLM_F_DUMP as u16,
                seq,
            );
            sys::nftnl_obj_nlmsg_build_payload(h, o);
            sys::nftnl_obj_free(o);
        }
    }
}

/// A named map with a concatenated key, or a plain set, as `nft` creates it from a `typeof`
/// declaration.
pub struct SetMsg {
    /// Table the set lives in.
    pub table: CString,
    /// Set name.
    pub name: CString,
    /// Batch-local id, so rules in the same batch can refer to the set before it exists.
    pub id: u32,
    /// nft's numeric key type (concatenations combine 6-bit type ids).
    pub key_type: u32,
    /// Key length in bytes (each concatenated field padded to 4).
    pub key_len: u32,
    /// For a map: nft's numeric data type and the data length in bytes.
    pub data: Option<(u32, u32)>,
    /// nft user data: byte orders and the `typeof` expressions, so `nft list` prints the set
    /// the way it was declared.
    pub udata: Vec<u8>,
    /// Give every element its own packet/byte counter.
    pub counter: bool,
}

unsafe impl NlMsg for SetMsg {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, msg_type: MsgType) {
        let (ty, flags) = match msg_type {
            MsgType::Add => (
                libc::NFT_MSG_NEWSET,
                libc::NLM_F_CREATE | libc::NLM_F_EXCL | libc::NLM_F_ACK,
            ),
            MsgType::Del => (libc::NFT_MSG_DELSET, libc::NLM_F_ACK),
        };
        // SAFETY: the caller guarantees the buffer size; the set object is ours and freed here.
        unsafe {
            let s = alloc(sys::nftnl_set_alloc()).as_ptr();
            let a = |attr: u32| attr as u16;
            sys::nftnl_set_set_u32(s, a(sys::NFTNL_SET_FAMILY), u32::from(FAMILY_IP));
            sys::nftnl_set_set_str(s, a(sys::NFTNL_SET_TABLE), self.table.as_ptr());
            sys::nftnl_set_set_str(s, a(sys::NFTNL_SET_NAME), self.name.as_ptr());
            if msg_type == MsgType::Add {
                sys::nftnl_set_set_u32(s, a(sys::NFTNL_SET_ID), self.id);
                // nft sends the flags attribute also when it is 0 (a plain set).
                let set_flags = if self.data.is_some() {
                    libc::NFT_SET_MAP as u32
                } else {
                    0
                };
                sys::nftnl_set_set_u32(s, a(sys::NFTNL_SET_FLAGS), set_flags);
                sys::nftnl_set_set_u32(s, a(sys::NFTNL_SET_KEY_TYPE), self.key_type);
                sys::nftnl_set_set_u32(s, a(sys::NFTNL_SET_KEY_LEN), self.key_len);
                if let Some((data_type, data_len)) = self.data {
                    sys::nftnl_set_set_u32(s, a(sys::NFTNL_SET_DATA_TYPE), data_type);
                    sys::nftnl_set_set_u32(s, a(sys::NFTNL_SET_DATA_LEN), data_len);
                }
                sys::nftnl_set_set_data(
                    s,
                    a(sys::NFTNL_SET_USERDATA),
                    self.udata.as_ptr().cast(),
                    self.udata.len() as u32,
                );
                if self.counter {
                    sys::nftnl_set_add_expr(s, counter().build().as_ptr());
                }
            }
            sys::nftnl_set_nlmsg_build_payload(header(buf, ty, flags, seq), s);
            sys::nftnl_set_free(s);
        }
    }
}

/// Adds or deletes elements of a map or set, or flushes it.
pub struct ElemsMsg {
    table: CString,
    set: CString,
    /// (key, data); data is ignored for deletes and empty for a set. Empty for a flush.
    elems: Vec<(Vec<u8>, Vec<u8>)>,
}

impl ElemsMsg {
    /// Elements to add (`MsgType::Add`) or delete (`MsgType::Del`).
    pub fn new(table: &CStr, set: &CStr, elems: Vec<(Vec<u8>, Vec<u8>)>) -> Self {
        ElemsMsg {
            table: table.to_owned(),
            set: set.to_owned(),
            elems,
        }
    }

    /// Sent with `MsgType::Del`: the kernel removes every element when the list is absent.
    pub fn flush(table: &CStr, set: &CStr) -> Self {
        Self::new(table, set, Vec::new())
    }
}

/// One transaction emptying every set or map of `sets` in `table`.
pub fn flush_txn(table: &CStr, sets: &[&CStr]) -> super::netlink::Txn {
    let mut txn = super::netlink::Txn::new();
    for &set in sets {
        txn.add(
            &ElemsMsg::flush(table, set),
            MsgType::Del,
            format!(
                "flush {} of table ip {}",
                set.to_string_lossy(),
                table.to_string_lossy()
            ),
        );
    }
    txn
}

unsafe impl NlMsg for ElemsMsg {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, msg_type: MsgType) {
        // No NLM_F_EXCL: re-adding an element with identical data is then a no-op, while a
        // different value for an existing key still fails (EBUSY) instead of silently
        // rerouting a call.
        let (ty, flags) = match msg_type {
            MsgType::Add => (
                libc::NFT_MSG_NEWSETELEM,
                libc::NLM_F_CREATE | libc::NLM_F_ACK,
            ),
            MsgType::Del => (libc::NFT_MSG_DELSETELEM, libc::NLM_F_ACK),
        };
        // SAFETY: the caller guarantees the buffer size; the set and its elements are ours.
        unsafe {
            let s = alloc(sys::nftnl_set_alloc()).as_ptr();
            sys::nftnl_set_set_u32(s, sys::NFTNL_SET_FAMILY as u16, u32::from(FAMILY_IP));
            sys::nftnl_set_set_str(s, sys::NFTNL_SET_TABLE as u16, self.table.as_ptr());
            sys::nftnl_set_set_str(s, sys::NFTNL_SET_NAME as u16, self.set.as_ptr());
            for (key, data) in &self.elems {
                let e = alloc(sys::nftnl_set_elem_alloc()).as_ptr();
                sys::nftnl_set_elem_set(
                    e,
                    sys::NFTNL_SET_ELEM_KEY as u16,
                    key.as_ptr().cast(),
                    key.len() as u32,
                );
                if msg_type == MsgType::Add && !data.is_empty() {
                    sys::nftnl_set_elem_set(
                        e,
                        sys::NFTNL_SET_ELEM_DATA as u16,
                        data.as_ptr().cast(),
                        data.len() as u32,
                    );
                }
                sys::nftnl_set_elem_add(s, e);
            }
            sys::nftnl_set_elems_nlmsg_build_payload(header(buf, ty, flags, seq), s);
            sys::nftnl_set_free(s);
        }
    }
}

/// nft's user data: a flat list of `{u8 type, u8 len, value}` records; a nest is a record whose
/// value is again such a list. Numbers are host-endian u32 (libnftnl's `nftnl_udata_put_u32`).
#[derive(Default)]
pub struct Udata(Vec<u8>);

impl Udata {
    /// Appends a u32 record.
    pub fn u32(mut self, ty: u8, v: u32) -> Self {
        self.0.extend_from_slice(&[ty, 4]);
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }

    /// Appends a nest containing `inner`.
    pub fn nest(mut self, ty: u8, inner: Udata) -> Self {
        let len = u8::try_from(inner.0.len()).expect("nft user data nest longer than 255 bytes");
        self.0.extend_from_slice(&[ty, len]);
        self.0.extend_from_slice(&inner.0);
        self
    }

    /// The encoded bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// Builds a dump request for the rules of one chain of our family.
pub fn dump_rules<'a>(table: &'a CStr, chain: &'a CStr) -> impl FnOnce(&mut [u8], u32) + 'a {
    move |buf, seq| {
        // SAFETY: as in get_table; the rule object is ours and freed here.
        unsafe {
            let r = alloc(sys::nftnl_rule_alloc()).as_ptr();
            sys::nftnl_rule_set_str(r, sys::NFTNL_RULE_TABLE as u16, table.as_ptr());
            sys::nftnl_rule_set_str(r, sys::NFTNL_RULE_CHAIN as u16, chain.as_ptr());
            let h = sys::nftnl_nlmsg_build_hdr(
                buf.as_mut_ptr().cast(),
                libc::NFT_MSG_GETRULE as u16,
                FAMILY_IP,
                libc::NLM_F_DUMP as u16,
                seq,
            );
            sys::nftnl_rule_nlmsg_build_payload(h, r);
            sys::nftnl_rule_free(r);
        }
    }
}

/// Adds the packets and bytes of every `counter` expression of the rule in one GETRULE answer
/// to `sum`.
pub fn add_rule_counters(raw: &[u8], sum: &mut (u64, u64)) -> Result<(), NftError> {
    unsafe extern "C" fn cb(e: *mut sys::nftnl_expr, data: *mut c_void) -> c_int {
        // SAFETY: called by libnftnl with a valid expression and the pointer we passed.
        unsafe {
            let name = sys::nftnl_expr_get_str(e, sys::NFTNL_EXPR_NAME as u16);
            if !name.is_null() && CStr::from_ptr(name) == c"counter" {
                let s = &mut *data.cast::<(u64, u64)>();
                s.0 += sys::nftnl_expr_get_u64(e, sys::NFTNL_EXPR_CTR_PACKETS as u16);
                s.1 += sys::nftnl_expr_get_u64(e, sys::NFTNL_EXPR_CTR_BYTES as u16);
            }
        }
        0
    }
    // SAFETY: `raw` is one complete netlink message; the rule object is ours and freed here;
    // `sum` outlives the foreach.
    unsafe {
        let r = alloc(sys::nftnl_rule_alloc()).as_ptr();
        if sys::nftnl_rule_nlmsg_parse(raw.as_ptr().cast(), r) < 0 {
            sys::nftnl_rule_free(r);
            return Err(NftError::Protocol("cannot parse a rule".into()));
        }
        sys::nftnl_expr_foreach(r, Some(cb), (sum as *mut (u64, u64)).cast());
        sys::nftnl_rule_free(r);
    }
    Ok(())
}

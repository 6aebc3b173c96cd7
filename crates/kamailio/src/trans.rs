//! Transformation classes (`{class.name,param}`).
//!
//! The core parses `{kz.json,PATH}` by calling the class's `tparse` with the
//! text after `kz.`; it expects the callback to fill the `trans_t` and return
//! a pointer to the closing `}`. Parameters could be handed to the core as
//! `tr_param_t` lists, but the core then frees them with `pkg_free`, so a
//! Rust class keeps its parsed parameters here instead: each parsed
//! transformation becomes an entry of a per-process registry, and its index
//! travels in `trans_t.subtype`. Results are written into a ring of four
//! per-process buffers, because the output of one transformation is the
//! input of the next in a chain (`$(x{kz.json,a}{kz.encode})`).
use std::any::Any;
use std::cell::UnsafeCell;
use std::ffi::{c_char, c_int, c_void};
use std::sync::{Arc, Mutex};

use crate::msg::SipMsg;
use crate::sys;

/// What a transformation produced.
#[derive(Debug)]
pub enum TransOutput {
    Str(Vec<u8>),
    Int(i32),
}

/// A transformation class implemented in Rust.
pub trait TransClass: 'static {
    /// A parsed transformation (name and parameters).
    type Spec: Send + Sync + 'static;

    /// Parses the text after `<class>.` (it runs to the end of the
    /// expression). Returns the spec and the offset of the closing `}`.
    fn parse(text: &[u8]) -> Result<(Self::Spec, usize), String>;

    /// Applies the transformation to a string input.
    fn eval(msg: &mut SipMsg, spec: &Self::Spec, input: &[u8]) -> Result<TransOutput, String>;
}

type RegistryEntry = Arc<dyn Any + Send + Sync>;

/// Parsed transformations of this process (filled while the config is parsed
/// in the main process, so every child inherits the same indexes).
static REGISTRY: Mutex<Vec<RegistryEntry>> = Mutex::new(Vec::new());

/// A transformation parameter: a literal, a pseudo-variable, or a format
/// string with embedded pseudo-variables (re-evaluated at every use).
#[derive(Debug)]
pub enum TransParam {
    Literal(Vec<u8>),
    Spec(*mut sys::pv_spec_t),
    Format(*mut sys::pv_elem_t),
}

// SAFETY: the pointers refer to parse results the core keeps for the process
// lifetime; they are dereferenced only by `value`, on the host thread.
unsafe impl Send for TransParam {}
// SAFETY: as above; nothing mutates them after parsing.
unsafe impl Sync for TransParam {}

impl TransParam {
    /// Parses a parameter at the start of `text` the way the C module does:
    /// leading white space is skipped; `$...` is a pseudo-variable; anything
    /// else runs up to `,`, `}`, tab or newline and may embed variables.
    /// Returns the parameter and how many bytes of `text` it used.
    pub fn parse(text: &[u8]) -> Result<(TransParam, usize), String> {
        let start = text
            .iter()
            .position(|&b| b != b' ' && b != b'\t')
            .unwrap_or(text.len());
        let rest = &text[start..];
        if rest.first() == Some(&b'$') {
            let mut input = sys::str_ {
                s: rest.as_ptr() as *mut c_char,
                len: c_int::try_from(rest.len()).map_err(|_| "parameter too long")?,
            };
            // The spec is owned for the process lifetime: the registry never
            // drops entries, and the core may keep pointers into it.
            let spec: &mut sys::pv_spec_t = Box::leak(Box::new(sys::pv_spec_t {
                type_: 0,
                getf: None,
                setf: None,
                pvp: [0; 56],
                trans: std::ptr::null_mut(),
            }));
            // SAFETY: `input` views `rest`, which outlives the call, and `spec` is zeroed storage of the right size.
            let end = unsafe { sys::pv_parse_spec2(&mut input, spec, 0) };
            if end.is_null() {
                return Err(format!(
                    "invalid variable in parameter: {}",
                    String::from_utf8_lossy(rest)
                ));
            }
            let used = end as usize - rest.as_ptr() as usize;
            return Ok((TransParam::Spec(spec), start + used));
        }
        let len = rest
            .iter()
            .position(|&b| matches!(b, b',' | b'}' | b'\t' | b'\n'))
            .unwrap_or(rest.len());
        let literal = &rest[..len];
        if !literal.contains(&b'$') {
            return Ok((TransParam::Literal(literal.to_vec()), start + len));
        }
        // The core keeps pointers into the format text, so it must live on.
        let owned: &'static [u8] = Box::leak(literal.to_vec().into_boxed_slice());
        let mut input = sys::str_ {
            s: owned.as_ptr() as *mut c_char,
            len: owned.len() as c_int,
        };
        let mut elem: *mut sys::pv_elem_t = std::ptr::null_mut();
        // SAFETY: `input` views leaked (static) bytes; `elem` receives the list.
        if unsafe { sys::pv_parse_format(&mut input, &mut elem) } < 0 || elem.is_null() {
            return Err(format!(
                "invalid format in parameter: {}",
                String::from_utf8_lossy(literal)
            ));
        }
        Ok((TransParam::Format(elem), start + len))
    }

    /// The parameter's value for `msg`.
    pub fn value(&self, msg: &mut SipMsg) -> Result<Vec<u8>, String> {
        match self {
            TransParam::Literal(bytes) => Ok(bytes.clone()),
            TransParam::Spec(spec) => {
                let mut val = sys::pv_value_t::empty();
                // SAFETY: a spec parsed by the core, the current message, and an output value the core fills.
                let rc = unsafe { sys::pv_get_spec_value(msg.as_ptr(), *spec, &mut val) };
                if rc != 0 || val.flags & sys::PV_VAL_NULL != 0 || val.flags & sys::PV_VAL_STR == 0
                {
                    return Err("the parameter variable has no string value".into());
                }
                // SAFETY: the core returned a valid string in `val`.
                let bytes = unsafe { val.rs.as_bytes() }.to_vec();
                // SAFETY: values flagged as pkg/shm were allocated for us to free.
                unsafe { release_value(&val) };
                if bytes.is_empty() {
                    return Err("the parameter variable is empty".into());
                }
                Ok(bytes)
            }
            TransParam::Format(elem) => {
                let mut out = sys::str_::NULL;
                // SAFETY: a format parsed by the core and the current message.
                if unsafe { sys::pv_printf_s(msg.as_ptr(), *elem, &mut out) } != 0 {
                    return Err("cannot evaluate the parameter".into());
                }
                // SAFETY: the core's print buffer holds the result until the next print; it is copied at once.
                Ok(unsafe { out.as_bytes() }.to_vec())
            }
        }
    }
}

/// Frees a value the core handed over with ownership flags.
///
/// # Safety
/// `val` must come from the core and not be used afterwards.
unsafe fn release_value(val: &sys::pv_value_t) {
    if val.rs.s.is_null() {
        return;
    }
    if val.flags & sys::PV_VAL_PKG != 0 {
        // SAFETY: the core flagged the string as a pkg block owned by us.
        unsafe { crate::mem::pkg_free(val.rs.s as *mut c_void) };
    } else if val.flags & sys::PV_VAL_SHM != 0 {
        // SAFETY: the core flagged the string as a shm block owned by us.
        unsafe { crate::mem::shm_free(val.rs.s as *mut c_void) };
    }
}

/// Four rotating output buffers (see the module comment).
struct OutputRing {
    slots: UnsafeCell<([Vec<u8>; 4], usize)>,
}

// SAFETY: used only from the host thread (checked in `store`).
unsafe impl Sync for OutputRing {}

static OUTPUT: OutputRing = OutputRing {
    slots: UnsafeCell::new(([Vec::new(), Vec::new(), Vec::new(), Vec::new()], 0)),
};

impl OutputRing {
    /// Moves `bytes` into the next slot and returns a `str` over it, valid
    /// until the slot comes round again.
    fn store(&self, bytes: Vec<u8>) -> Result<sys::str_, String> {
        assert!(
            crate::thread::is_host_thread(),
            "transformation off the host thread"
        );
        let len = c_int::try_from(bytes.len()).map_err(|_| "result too large".to_string())?;
        // SAFETY: host thread only, and no reference into the ring escapes except the raw pointer handed to the core.
        let (slots, next) = unsafe { &mut *self.slots.get() };
        *next = (*next + 1) % slots.len();
        slots[*next] = bytes;
        Ok(sys::str_ {
            s: slots[*next].as_ptr() as *mut c_char,
            len,
        })
    }
}

/// The `tparse` callback of a Rust transformation class.
///
/// # Safety
/// Called by the core's transformation parser.
pub unsafe extern "C" fn parse_entry<T: TransClass>(
    input: *mut sys::str_,
    t: *mut sys::trans_t,
) -> *mut c_char {
    crate::guard::guarded("transformation parser", std::ptr::null_mut(), || {
        if input.is_null() || t.is_null() {
            return std::ptr::null_mut();
        }
        // SAFETY: the core passes the rest of the expression text.
        let text = unsafe { (*input).as_bytes() };
        let (spec, close) = match T::parse(text) {
            Ok(parsed) => parsed,
            Err(reason) => {
                crate::error!(
                    "invalid transformation `{}`: {reason}",
                    String::from_utf8_lossy(text)
                );
                return std::ptr::null_mut();
            }
        };
        if text.get(close) != Some(&b'}') {
            crate::error!(
                "invalid transformation `{}`: missing `}}`",
                String::from_utf8_lossy(text)
            );
            return std::ptr::null_mut();
        }
        let index = {
            let mut registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
            registry.push(Arc::new(spec));
            registry.len() - 1
        };
        let Ok(subtype) = c_int::try_from(index) else {
            return std::ptr::null_mut();
        };
        // SAFETY: `t` is the core's freshly allocated transformation.
        unsafe {
            (*t).subtype = subtype;
            (*t).trf = Some(eval_entry::<T>);
            (*t).params = std::ptr::null_mut();
            (*input).s.add(close)
        }
    })
}

/// The `trf` callback of a Rust transformation class.
///
/// # Safety
/// Called by the core's transformation executor with a value it owns.
pub unsafe extern "C" fn eval_entry<T: TransClass>(
    msg: *mut sys::sip_msg,
    _params: *mut sys::tr_param_t,
    subtype: c_int,
    val: *mut sys::pv_value_t,
) -> c_int {
    crate::guard::guarded("transformation", -1, || {
        if val.is_null() {
            return -1;
        }
        let spec = {
            let registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
            usize::try_from(subtype)
                .ok()
                .and_then(|i| registry.get(i).cloned())
        };
        let Some(spec) = spec.and_then(|s| s.downcast::<T::Spec>().ok()) else {
            crate::error!("unknown transformation {subtype}");
            return -1;
        };
        // SAFETY: the core passes its value; only string inputs are read.
        let value = unsafe { *val };
        if value.flags & sys::PV_VAL_STR == 0 || value.flags & sys::PV_VAL_NULL != 0 {
            crate::error!("transformation input is not a string");
            return -1;
        }
        // SAFETY: the current message from the core.
        let mut msg = unsafe { SipMsg::from_raw(msg) };
        // SAFETY: the input string is valid until we release or replace it.
        let input = unsafe { value.rs.as_bytes() };
        let result = T::eval(&mut msg, &spec, input);
        // SAFETY: the input is no longer used; free it if we own it.
        unsafe { release_value(&value) };
        let out = match result {
            Ok(TransOutput::Str(bytes)) => OUTPUT.store(bytes).map(|rs| sys::pv_value_t {
                rs,
                ri: 0,
                flags: sys::PV_VAL_STR,
            }),
            Ok(TransOutput::Int(n)) => {
                OUTPUT
                    .store(n.to_string().into_bytes())
                    .map(|rs| sys::pv_value_t {
                        rs,
                        ri: sys::pv_int_from_i32(n),
                        flags: sys::PV_VAL_STR | sys::PV_VAL_INT | sys::PV_TYPE_INT,
                    })
            }
            Err(reason) => Err(reason),
        };
        match out {
            Ok(new_value) => {
                // SAFETY: writing the result into the core's value.
                unsafe { *val = new_value };
                0
            }
            Err(reason) => {
                crate::log::plain(
                    crate::log::Level::Err,
                    format_args!("transformation failed: {reason}"),
                );
                // SAFETY: the input was released; leave a null value behind.
                unsafe {
                    *val = sys::pv_value_t {
                        rs: sys::str_::NULL,
                        ri: 0,
                        flags: sys::PV_VAL_NULL,
                    }
                };
                -1
            }
        }
    })
}

/// Registers transformation classes (call from `mod_register`); `exports`
/// must end with an empty row.
pub(crate) fn register_class(
    path: &crate::__private::ModulePath,
    exports: &'static [sys::tr_export_t],
) -> bool {
    if exports.last().is_none_or(|last| last.tparse.is_some()) {
        return false;
    }
    // SAFETY: the path is the one the core passed to mod_register, and the static table ends with a zero entry; the core copies the entries.
    unsafe { sys::register_trans_mod(path.as_ptr(), exports.as_ptr()) == 0 }
}

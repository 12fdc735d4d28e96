//! Exposes a page of generation counters to JS as an external `ArrayBuffer`, without copying,
//! so the JS memo can check a counter with one typed-array read.
//!
//! Why raw `napi_create_external_arraybuffer` instead of `ArrayBuffer::from_external`: napi-rs
//! debug builds refuse a second `ArrayBuffer` over the same memory, guarding against a V8 8.x
//! crash (nodejs/node#32463) that registered every backing store globally. The V8 of Node 20+
//! registers only wasm memories, and every JS instance (and worker) needs its own view of the
//! same page, so we create the views ourselves. The page stays alive until the last view is
//! collected: each view's finalizer owns an `Arc` to it.

use authpipe_core::{GenerationPage, PAGE_SLOTS};
use napi::bindgen_prelude::{ToNapiValue, TypeName, ValidateNapiValue};
use napi::{sys, Env, ValueType};
use napi_derive::napi;

/// Counters per page, so JS finds slot `s` at page `s / GENERATION_PAGE_SLOTS`.
#[napi]
#[allow(dead_code)] // reached only through napi's export registration
pub const GENERATION_PAGE_SLOTS: u32 = PAGE_SLOTS as u32;
use std::ffi::c_void;
use std::sync::Arc;

/// An `ArrayBuffer` viewing one page; JS reads it as a `Uint32Array`.
pub struct PageBuffer(sys::napi_value);

impl TypeName for PageBuffer {
    fn type_name() -> &'static str {
        "ArrayBuffer"
    }
    fn value_type() -> ValueType {
        ValueType::Object
    }
}

impl ValidateNapiValue for PageBuffer {}

impl ToNapiValue for PageBuffer {
    unsafe fn to_napi_value(_env: sys::napi_env, value: Self) -> napi::Result<sys::napi_value> {
        Ok(value.0)
    }
}

unsafe extern "C" fn release_page(_env: sys::napi_env, _data: *mut c_void, hint: *mut c_void) {
    // SAFETY: `hint` is the `Box<Arc<GenerationPage>>` leaked in `page_buffer`, freed once here.
    drop(unsafe { Box::from_raw(hint.cast::<Arc<GenerationPage>>()) });
}

pub fn page_buffer(env: &Env, page: Arc<GenerationPage>) -> napi::Result<PageBuffer> {
    let data = page.cells().as_ptr().cast_mut().cast::<c_void>();
    let len = PAGE_SLOTS * std::mem::size_of::<u32>();
    let hint = Box::into_raw(Box::new(page));
    let mut value = std::ptr::null_mut();
    // SAFETY: `data` points to `len` bytes owned by the page, which `hint` keeps alive until
    // `release_page` runs. The counters are atomics; JS only reads them (32-bit aligned loads).
    let status = unsafe {
        sys::napi_create_external_arraybuffer(
            env.raw(),
            data,
            len,
            Some(release_page),
            hint.cast(),
            &mut value,
        )
    };
    if status != sys::Status::napi_ok {
        // SAFETY: the call failed, so the finalizer will never run; reclaim the hint here.
        drop(unsafe { Box::from_raw(hint) });
        return Err(napi::Error::new(
            napi::Status::GenericFailure,
            "cannot expose generation counters to JS",
        ));
    }
    Ok(PageBuffer(value))
}

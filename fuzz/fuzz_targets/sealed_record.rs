//! Stored record bytes (header and ciphertext), wrapped tenant keys and configured master keys:
//! refused with an error unless genuine; and sealing round-trips, with any flipped byte refused.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    stored: Vec<u8>,
    plaintext: Vec<u8>,
    flip: usize,
    wrapped: Vec<u8>,
    generation: u32,
    master_key: String,
}

fuzz_target!(|input: Input| {
    authpipe_core::fuzzing::sealed_record(&input.stored, &input.plaintext, input.flip);
    authpipe_core::fuzzing::wrapped_tenant_key(&input.wrapped, input.generation, &input.master_key);
});

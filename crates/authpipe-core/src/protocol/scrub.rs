//! Keeping what a request sent out of what we keep of the answer.
//!
//! Some token endpoints echo their input in `error_description` ("invalid refresh token
//! 'xyz...'"). That text would reach error messages, `lastError`, events and the store's
//! plaintext `last_error_message` column, so before any provider text is kept, every value the
//! request carried (parameters, client id and secret, the authorization header, the token of an
//! identity probe) is cut out of it, in the forms an echo can take: as sent, form-encoded, and
//! any fragment of one long enough to be a piece of a token.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use url::form_urlencoded::byte_serialize;
use zeroize::Zeroizing;

/// What a redacted value reads as.
pub const REDACTED: &str = "[redacted]";

/// A value shorter than this cannot be cut out of text reliably (it may be part of ordinary
/// words), so a request that sent one keeps no provider text at all.
const SHORTEST_SCRUBBABLE: usize = 4;

/// Any stretch of this many characters that also occurs inside a sent value is cut out too: an
/// echo may quote a token cut short, or with other characters around or inside it.
const FRAGMENT: usize = 8;

/// The values one request sent, zeroized when dropped. Build it alongside the request; give
/// it to the [`Answer`](super::http::Answer), whose text is then only read through
/// [`Sent::scrub`].
#[derive(Default)]
pub struct Sent {
    values: Vec<Zeroizing<String>>,
}

impl std::fmt::Debug for Sent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sent")
            .field("values", &self.values.len())
            .finish()
    }
}

impl Sent {
    /// Records a value the request carries (and its form-encoded spelling, if different).
    pub fn add(&mut self, value: &str) {
        if value.is_empty() {
            return;
        }
        let encoded: Zeroizing<String> = Zeroizing::new(byte_serialize(value.as_bytes()).collect());
        if *encoded != value {
            self.values.push(encoded);
        }
        self.values.push(Zeroizing::new(value.to_owned()));
    }

    /// Records HTTP Basic credentials as sent (`base64(id:secret)`), besides id and secret.
    pub fn add_basic(&mut self, encoded_id: &str, encoded_secret: &str) {
        self.add(encoded_id);
        self.add(encoded_secret);
        let pair = Zeroizing::new(format!("{encoded_id}:{encoded_secret}"));
        self.add(&Zeroizing::new(STANDARD.encode(pair.as_bytes())));
    }

    /// `text` without anything this request sent, or `None` when that cannot be promised (a
    /// sent value too short to find reliably).
    pub fn scrub(&self, text: &str) -> Option<String> {
        if self
            .values
            .iter()
            .any(|v| v.chars().count() < SHORTEST_SCRUBBABLE)
        {
            return None;
        }
        let mut text = text.to_owned();
        // Longest first, so a value is not half-cut by a shorter one it contains.
        let mut values: Vec<&str> = self.values.iter().map(|v| v.as_str()).collect();
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        for value in &values {
            if text.contains(value) {
                text = text.replace(value, REDACTED);
            }
        }
        Some(self.cut_fragments(&text))
    }

    /// Whether `text`, a field of an answer that is kept in plaintext (an account name, a
    /// granted scope), carries nothing this request sent: an endpoint that echoes its input
    /// into a successful answer must not put a token there either.
    pub fn is_clean(&self, text: &str) -> bool {
        self.scrub(text).is_some_and(|scrubbed| scrubbed == text)
    }

    /// Replaces every stretch of the text covered by a [`FRAGMENT`]-character window that also
    /// occurs in a sent value with [`REDACTED`] (one per stretch).
    fn cut_fragments(&self, text: &str) -> String {
        let chars: Vec<char> = text.chars().collect();
        let mut covered = vec![false; chars.len()];
        let mut window = String::with_capacity(4 * FRAGMENT);
        for start in 0..chars.len().saturating_sub(FRAGMENT - 1) {
            window.clear();
            window.extend(&chars[start..start + FRAGMENT]);
            if self.values.iter().any(|v| v.contains(window.as_str())) {
                covered[start..start + FRAGMENT].fill(true);
            }
        }
        let mut out = String::with_capacity(text.len());
        for (i, c) in chars.iter().enumerate() {
            match (covered[i], i > 0 && covered[i - 1]) {
                (true, false) => out.push_str(REDACTED),
                (true, true) => {}
                (false, _) => out.push(*c),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(values: &[&str]) -> Sent {
        let mut sent = Sent::default();
        for v in values {
            sent.add(v);
        }
        sent
    }

    #[test]
    fn cuts_every_sent_value_out() {
        let sent = sent(&["rt-0123456789abcdef", "client-secret-value", "my client"]);
        let text = "refresh token rt-0123456789abcdef is invalid for my client (secret client-secret-value)";
        assert_eq!(
            sent.scrub(text).unwrap(),
            "refresh token [redacted] is invalid for [redacted] (secret [redacted])"
        );
    }

    #[test]
    fn cuts_form_encoded_and_basic_spellings() {
        let mut sent = sent(&["a b/c+d=e&f-long-enough"]);
        sent.add_basic("client-id", "s3cret%2Bvalue");
        let basic = STANDARD.encode("client-id:s3cret%2Bvalue");
        let text = format!("body a+b%2Fc%2Bd%3De%26f-long-enough header Basic {basic}");
        let scrubbed = sent.scrub(&text).unwrap();
        assert_eq!(scrubbed, "body [redacted] header Basic [redacted]");
    }

    #[test]
    fn a_field_is_clean_only_without_any_sent_value_or_piece_of_one() {
        let sent = sent(&["at-0123456789abcdef"]);
        assert!(sent.is_clean("Acme Workspace"));
        assert!(!sent.is_clean("Workspace of at-0123456789abcdef"));
        assert!(!sent.is_clean("at-01234567"), "a token cut short");
        assert!(
            !self::sent(&["abc"]).is_clean("Acme"),
            "a value too short to find"
        );
    }

    #[test]
    fn cuts_fragments_of_a_sent_token() {
        let sent = sent(&[
            "eyJhbGciOiJSUzI1NiJ9.cGF5bG9hZA.c2lnbmF0dXJl",
            "s3cr$t!with spaces",
        ]);
        // A provider that quotes the token cut short, in quotes.
        let scrubbed = sent
            .scrub("token 'eyJhbGciOiJSUzI1NiJ9.cGF5...' expired")
            .unwrap();
        assert_eq!(scrubbed, "token '[redacted]...' expired");
        // A fragment with characters tokens do not use, and one of just 8 characters.
        assert_eq!(sent.scrub("got 'r$t!with sp'").unwrap(), "got '[redacted]'");
        assert_eq!(
            sent.scrub("prefix eyJhbGci...").unwrap(),
            "prefix [redacted]..."
        );
        // Ordinary words are kept.
        assert_eq!(
            sent.scrub("the signature is bad").unwrap(),
            "the signature is bad"
        );
    }

    #[test]
    fn keeps_nothing_when_a_sent_value_is_too_short_to_find() {
        let sent = sent(&["abc", "long-enough-value"]);
        assert_eq!(sent.scrub("anything at all"), None);
    }

    #[test]
    fn debug_shows_no_value() {
        let sent = sent(&["rt-0123456789abcdef"]);
        assert_eq!(format!("{sent:?}"), "Sent { values: 1 }");
    }
}

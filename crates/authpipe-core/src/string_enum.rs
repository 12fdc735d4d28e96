//! `string_enum!`: the one place a public string list is written down.
//!
//! Error codes, connection statuses, event names and credential kinds are part of the public API
//! in their string form. Each is declared once, with this macro, as a fieldless enum whose
//! variants carry their string and their doc comment; the macro derives `as_str`, `parse`,
//! `ALL`, `doc` and `Display` from that one list. The TypeScript unions and arrays in
//! `lib/generated.ts` (and `react/src/generated.ts`) are rendered from `ALL` by
//! `tests/generated_ts.rs`, which fails when the committed files are stale.
//!
//! Why a declarative macro in the core rather than `#[napi(string_enum)]` in the binding: the
//! core uses these enums itself (stores persist statuses, errors carry codes) and has no napi;
//! with napi's attribute the binding would be the source and the core would keep a second copy.
//! Why not a proc-macro crate: this needs nothing a `macro_rules!` cannot do.

/// Declares a fieldless enum whose variants each have a stable string form.
///
/// ```ignore
/// string_enum! {
///     /// What the enum is.
///     pub enum Colour {
///         /// What red means.
///         Red = "red",
///         Green = "green",
///     }
/// }
/// ```
///
/// Generates the enum (`Clone, Copy, Debug, PartialEq, Eq, Hash`) and:
/// `as_str`, `parse` (the inverse of `as_str`), `ALL` (declaration order), `doc` (the variant's
/// doc comment, one line per `///` line, leading space removed by the renderer) and `Display`.
macro_rules! string_enum {
    (
        $(#[doc = $enum_doc:literal])*
        $vis:vis enum $name:ident {
            $(
                $(#[doc = $doc:literal])*
                $variant:ident = $value:literal
            ),+ $(,)?
        }
    ) => {
        $(#[doc = $enum_doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        $vis enum $name {
            $(
                $(#[doc = $doc])*
                $variant,
            )+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The stable string form (part of the public API: never changed for a variant).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $value,)+
                }
            }

            /// The variant whose string form is `value`.
            pub fn parse(value: &str) -> Option<Self> {
                match value {
                    $($value => Some(Self::$variant),)+
                    _ => None,
                }
            }

            /// The variant's doc comment (its `///` lines joined with `\n`), for generated docs.
            pub const fn doc(self) -> &'static str {
                match self {
                    $(Self::$variant => $crate::string_enum::doc_lines!($($doc),*),)+
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// `#[doc]` strings joined with newlines (none: `""`).
macro_rules! doc_lines {
    () => {
        ""
    };
    ($first:literal $(, $rest:literal)*) => {
        concat!($first $(, "\n", $rest)*)
    };
}

pub(crate) use doc_lines;
pub(crate) use string_enum;

#[cfg(test)]
mod tests {
    string_enum! {
        /// A test enum.
        pub enum Colour {
            /// Warm.
            /// Two lines.
            Red = "red",
            Green = "light_green",
        }
    }

    #[test]
    fn generates_the_string_forms_and_their_inverse() {
        assert_eq!(Colour::ALL, &[Colour::Red, Colour::Green]);
        assert_eq!(Colour::Green.as_str(), "light_green");
        assert_eq!(Colour::Red.to_string(), "red");
        for &c in Colour::ALL {
            assert_eq!(Colour::parse(c.as_str()), Some(c));
        }
        assert_eq!(Colour::parse("Red"), None);
        assert_eq!(Colour::Red.doc(), " Warm.\n Two lines.");
        assert_eq!(Colour::Green.doc(), "");
    }
}

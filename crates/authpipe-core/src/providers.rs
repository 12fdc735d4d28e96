//! The provider catalog: which provider ids exist. Built-in CRMs plus the app's custom
//! providers. (Endpoints and quirks per provider join this catalog with the connect flow.)

use crate::error::{Error, ErrorCode, Result};
use crate::ids::ProviderId;
use std::collections::BTreeSet;

/// Providers built into the catalog.
pub const BUILTIN: [&str; 8] = [
    "attio",
    "close",
    "copper",
    "dynamics365",
    "hubspot",
    "pipedrive",
    "salesforce",
    "zoho",
];

#[derive(Clone, Debug)]
pub struct Catalog {
    ids: BTreeSet<ProviderId>,
}

impl Catalog {
    /// The built-in providers plus `custom` ids from the app's configuration.
    pub fn new(custom: impl IntoIterator<Item = ProviderId>) -> Self {
        let mut ids: BTreeSet<ProviderId> = BUILTIN
            .iter()
            .map(|id| ProviderId::parse(*id).expect("built-in ids are valid"))
            .collect();
        ids.extend(custom);
        Self { ids }
    }

    pub fn contains(&self, id: &ProviderId) -> bool {
        self.ids.contains(id)
    }

    /// `UNKNOWN_PROVIDER` unless the catalog has `id`.
    pub fn require(&self, id: &ProviderId) -> Result<()> {
        if self.contains(id) {
            return Ok(());
        }
        let known: Vec<&str> = self.ids.iter().map(ProviderId::as_str).collect();
        Err(Error::new(
            ErrorCode::UnknownProvider,
            format!(
                "unknown provider '{id}'; known providers: {}. Custom providers are added with the `providers` option",
                known.join(", ")
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_builtins_and_custom_ids() {
        let catalog = Catalog::new([ProviderId::parse("mycrm").unwrap()]);
        assert!(catalog
            .require(&ProviderId::parse("attio").unwrap())
            .is_ok());
        assert!(catalog
            .require(&ProviderId::parse("mycrm").unwrap())
            .is_ok());
        let err = catalog
            .require(&ProviderId::parse("nope").unwrap())
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::UnknownProvider);
        assert!(err.message.contains("'nope'") && err.message.contains("attio"));
    }
}

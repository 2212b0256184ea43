//! The model catalog: priced offers, per endpoint, filtered per client.

use tollgate_plugin_types::{ModelOffer, OfferRef};

use crate::config::{CatalogEntry, ModelKind};

use super::tenancy::ClientEntry;

/// Every priced model.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    entries: Vec<CatalogEntry>,
}

impl Catalog {
    /// A catalog of `entries`.
    pub fn new(entries: Vec<CatalogEntry>) -> Self {
        Self { entries }
    }

    /// The offers `client` may use on an endpoint of `kind`.
    pub fn offers_for(&self, client: &ClientEntry, kind: ModelKind) -> Vec<ModelOffer> {
        self.entries
            .iter()
            .filter(|e| e.kind == kind)
            .filter(|e| {
                client
                    .models
                    .as_ref()
                    .is_none_or(|m| m.contains(&e.offer.model))
            })
            .map(|e| e.offer.clone())
            .collect()
    }

    /// Every model `client` may use, any endpoint.
    pub fn all_for<'a>(
        &'a self,
        client: &'a ClientEntry,
    ) -> impl Iterator<Item = &'a CatalogEntry> {
        self.entries.iter().filter(|e| {
            client
                .models
                .as_ref()
                .is_none_or(|m| m.contains(&e.offer.model))
        })
    }

    /// The entry an offer reference names.
    pub fn entry(&self, offer: &OfferRef) -> Option<&CatalogEntry> {
        self.entries.iter().find(|e| e.offer.is(offer))
    }
}

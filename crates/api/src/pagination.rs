//! Keyset pagination: `limit` (1–100, default 20) and an opaque cursor naming the last
//! id of the previous page. Ids sort by creation time and pages are newest first, so
//! rows inserted while a client pages through were created after its first page and
//! never shift, duplicate or hide the rows it has yet to see.
//!
//! A cursor is base64url (no padding) of `<tag>:<id>`; the tag says which listing it
//! belongs to, so a webhooks cursor is refused by the deliveries listing.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use qr3_domain::{DeliveryId, WebhookId};

use crate::{error::ApiError, wire::page::Page};

pub(crate) const DEFAULT_LIMIT: u32 = 20;
pub(crate) const MAX_LIMIT: u32 = 100;

/// An id a listing can resume after.
pub(crate) trait CursorId: Sized {
    /// Which listing a cursor belongs to.
    const TAG: &'static str;
    fn parse_id(s: &str) -> Option<Self>;
    fn id_str(&self) -> &str;
}

impl CursorId for WebhookId {
    const TAG: &'static str = "webhooks.v1";

    fn parse_id(s: &str) -> Option<Self> {
        WebhookId::parse(s).ok()
    }

    fn id_str(&self) -> &str {
        self.as_str()
    }
}

impl CursorId for DeliveryId {
    const TAG: &'static str = "deliveries.v1";

    fn parse_id(s: &str) -> Option<Self> {
        DeliveryId::parse(s).ok()
    }

    fn id_str(&self) -> &str {
        self.as_str()
    }
}

/// What page a client asked for, validated.
#[derive(Debug)]
pub(crate) struct PageRequest<Id> {
    /// 1..=100.
    pub limit: u32,
    /// Resume after this id (exclusive); `None` for the first page.
    pub after: Option<Id>,
}

impl<Id: CursorId> PageRequest<Id> {
    /// Validates the raw `limit` and `cursor` query parameters. An empty `cursor` means
    /// the first page, so `?cursor=` built from a `null` `next_cursor` works.
    pub(crate) fn parse(limit: Option<&str>, cursor: Option<&str>) -> Result<Self, ApiError> {
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(raw) => raw
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::invalid_field(
                        "limit",
                        format!("limit must be an integer from 1 to {MAX_LIMIT}"),
                    )
                })?,
        };
        let after = match cursor {
            None | Some("") => None,
            Some(raw) => Some(decode_cursor(raw).ok_or_else(|| {
                ApiError::invalid_field(
                    "cursor",
                    "cursor is not valid here: pass a `next_cursor` from this listing",
                )
            })?),
        };
        Ok(Self { limit, after })
    }

    /// The `after` and `limit` a store listing takes.
    pub(crate) fn store_args(&self) -> (Option<&Id>, i64) {
        (self.after.as_ref(), i64::from(self.limit))
    }

    /// Turns up to `limit + 1` rows (newest first) into a page: the extra row only says
    /// that there is more.
    pub(crate) fn page<R, T>(
        &self,
        mut rows: Vec<R>,
        id_of: impl Fn(&R) -> &Id,
        to_wire: impl Fn(R) -> T,
    ) -> Page<T> {
        let limit = self.limit as usize;
        let has_more = rows.len() > limit;
        rows.truncate(limit);
        let next_cursor = if has_more {
            rows.last().map(|last| encode_cursor(id_of(last)))
        } else {
            None
        };
        Page {
            data: rows.into_iter().map(to_wire).collect(),
            has_more,
            next_cursor,
        }
    }
}

pub(crate) fn encode_cursor<Id: CursorId>(id: &Id) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}:{}", Id::TAG, id.id_str()))
}

fn decode_cursor<Id: CursorId>(raw: &str) -> Option<Id> {
    let bytes = URL_SAFE_NO_PAD.decode(raw).ok()?;
    let text = std::str::from_utf8(&bytes).ok()?;
    let (tag, id) = text.split_once(':')?;
    (tag == Id::TAG).then(|| Id::parse_id(id))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_within_their_listing_only() {
        let id = WebhookId::generate();
        let cursor = encode_cursor(&id);
        assert!(!cursor.contains(id.as_str()), "opaque");
        assert_eq!(decode_cursor::<WebhookId>(&cursor), Some(id));
        assert_eq!(decode_cursor::<DeliveryId>(&cursor), None);
        assert_eq!(decode_cursor::<WebhookId>("not a cursor"), None);
    }

    #[test]
    fn limits_outside_1_to_100_are_refused() {
        for bad in ["0", "101", "-1", "ten", "1.5", ""] {
            assert!(
                PageRequest::<WebhookId>::parse(Some(bad), None).is_err(),
                "{bad}"
            );
        }
        assert_eq!(
            PageRequest::<WebhookId>::parse(None, None).unwrap().limit,
            20
        );
        assert_eq!(
            PageRequest::<WebhookId>::parse(Some("100"), None)
                .unwrap()
                .limit,
            100
        );
    }

    #[test]
    fn pages_report_more_only_when_there_is_more() {
        let request = PageRequest::<WebhookId>::parse(Some("2"), None).unwrap();
        let ids: Vec<WebhookId> = (0..3).map(|_| WebhookId::generate()).collect();
        let page = request.page(ids.clone(), |id| id, |id| id.to_string());
        assert_eq!(page.data.len(), 2);
        assert!(page.has_more);
        assert_eq!(
            page.next_cursor.as_deref(),
            Some(encode_cursor(&ids[1]).as_str())
        );
        let page = request.page(ids[..2].to_vec(), |id| id, |id| id.to_string());
        assert!(!page.has_more && page.next_cursor.is_none());
    }
}

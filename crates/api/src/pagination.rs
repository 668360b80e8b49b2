//! Keyset pagination: `limit` (1–100, default 20) and an opaque cursor naming the last
//! id of the previous page. Ids sort by creation time and pages are newest first, so
//! rows inserted while a client pages through were created after its first page and
//! never shift, duplicate or hide the rows it has yet to see.
//!
//! A cursor is base64url (no padding) of `<tag>:<id>`; the tag says which listing it
//! belongs to, so a webhooks cursor is refused by the deliveries listing.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use qr3_domain::{ApiKeyId, DeliveryId, Timestamp, WebhookId, WorkspaceId};

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

impl CursorId for ApiKeyId {
    const TAG: &'static str = "api_keys.v1";

    fn parse_id(s: &str) -> Option<Self> {
        ApiKeyId::parse(s).ok()
    }

    fn id_str(&self) -> &str {
        self.as_str()
    }
}

/// Where a listing of workspaces resumes: their ids are the platform's and do not sort
/// by creation time, so the key is `(created_at, id)`, written `<unix ms>:<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WorkspaceCursor {
    pub created_at: Timestamp,
    pub id: WorkspaceId,
    text: String,
}

impl WorkspaceCursor {
    /// The position of `workspace` in the listing.
    pub(crate) fn of(workspace: &qr3_store::Workspace) -> Self {
        Self {
            created_at: workspace.created_at,
            id: workspace.id.clone(),
            text: format!("{}:{}", workspace.created_at.unix_millis(), workspace.id),
        }
    }
}

impl CursorId for WorkspaceCursor {
    const TAG: &'static str = "workspaces.v1";

    fn parse_id(s: &str) -> Option<Self> {
        let (ms, id) = s.split_once(':')?;
        let ms: i64 = ms.parse().ok()?;
        let created_at = chrono::DateTime::from_timestamp_millis(ms)?;
        Some(Self {
            created_at: Timestamp::from(created_at),
            id: WorkspaceId::parse(id).ok()?,
            text: s.to_owned(),
        })
    }

    fn id_str(&self) -> &str {
        &self.text
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

pub(crate) fn decode_cursor<Id: CursorId>(raw: &str) -> Option<Id> {
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

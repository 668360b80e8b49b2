//! What a workspace is called: a name for people, set by the platform when it creates or
//! renames the workspace (`PUT /admin/v1/workspaces/{id}`, `workspace create NAME`).

use std::fmt;

/// Why a string is not a workspace name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidWorkspaceName {
    #[error("name must not be empty or only whitespace")]
    Blank,
    #[error("name must be at most {max} characters, not {len}")]
    TooLong { len: usize, max: usize },
    #[error("name must not contain control characters")]
    ControlCharacter,
}

/// A workspace's name: 1 to 200 characters, not only whitespace, no control characters.
/// Not unique; the id identifies a workspace.
#[derive(Clone, PartialEq, Eq)]
pub struct WorkspaceName(String);

impl WorkspaceName {
    /// The longest name accepted, in characters.
    pub const MAX_CHARS: usize = 200;

    pub fn parse(name: impl Into<String>) -> Result<Self, InvalidWorkspaceName> {
        let name = name.into();
        if name.trim().is_empty() {
            return Err(InvalidWorkspaceName::Blank);
        }
        let len = name.chars().count();
        if len > Self::MAX_CHARS {
            return Err(InvalidWorkspaceName::TooLong {
                len,
                max: Self::MAX_CHARS,
            });
        }
        if name.chars().any(char::is_control) {
            return Err(InvalidWorkspaceName::ControlCharacter);
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkspaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for WorkspaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_for_people_are_accepted() {
        for ok in ["Acme GmbH", "a", "Café Zürich 🍰", &"n".repeat(200)] {
            assert_eq!(WorkspaceName::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn blank_long_and_control_names_are_refused() {
        assert_eq!(WorkspaceName::parse(""), Err(InvalidWorkspaceName::Blank));
        assert_eq!(
            WorkspaceName::parse(" \t "),
            Err(InvalidWorkspaceName::Blank)
        );
        assert_eq!(
            WorkspaceName::parse("é".repeat(201)),
            Err(InvalidWorkspaceName::TooLong { len: 201, max: 200 })
        );
        assert_eq!(
            WorkspaceName::parse("line\nbreak"),
            Err(InvalidWorkspaceName::ControlCharacter)
        );
        assert_eq!(
            WorkspaceName::parse("nul\u{0}"),
            Err(InvalidWorkspaceName::ControlCharacter)
        );
    }
}

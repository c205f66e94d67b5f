//! The write side: a piece of content on an education platform, from
//! upload through processing to publication.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use strata_core::{Aggregate, Event};

/// What kind of content it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentType {
    /// A video lesson.
    Video,
    /// A written article.
    Article,
    /// A quiz.
    Quiz,
}

impl ContentType {
    pub const ALL: [ContentType; 3] = [ContentType::Video, ContentType::Article, ContentType::Quiz];

    pub fn as_str(self) -> &'static str {
        match self {
            ContentType::Video => "video",
            ContentType::Article => "article",
            ContentType::Quiz => "quiz",
        }
    }
}

/// Where a piece of content is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Uploaded, not processed yet.
    Uploaded,
    /// Being processed (transcoded, rendered, checked).
    Processing,
    /// Processed: ready to publish.
    Ready,
    /// Processing failed; it can be processed again.
    Failed,
    /// Visible to learners.
    Published,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::Uploaded,
        Status::Processing,
        Status::Ready,
        Status::Failed,
        Status::Published,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Uploaded => "uploaded",
            Status::Processing => "processing",
            Status::Ready => "ready",
            Status::Failed => "failed",
            Status::Published => "published",
        }
    }
}

macro_rules! text_enum {
    ($t:ty, $what:literal) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl FromStr for $t {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                <$t>::ALL
                    .into_iter()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| format!("unknown {} `{s}`", $what))
            }
        }
    };
}
text_enum!(ContentType, "content type");
text_enum!(Status, "status");

/// What an author or the processing pipeline asks of a piece of content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ContentCommand {
    /// Upload it.
    Upload { title: String, kind: ContentType },
    /// The pipeline picked it up.
    StartProcessing,
    /// The pipeline finished it.
    CompleteProcessing,
    /// The pipeline gave up on it.
    FailProcessing { reason: String },
    /// Make it visible to learners.
    Publish,
}

/// What happened to a piece of content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
pub enum ContentEvent {
    Uploaded { title: String, kind: ContentType },
    ProcessingStarted,
    ProcessingCompleted,
    ProcessingFailed { reason: String },
    Published,
}

impl ContentEvent {
    /// The status a piece of content has after this event.
    pub fn status(&self) -> Status {
        match self {
            ContentEvent::Uploaded { .. } => Status::Uploaded,
            ContentEvent::ProcessingStarted => Status::Processing,
            ContentEvent::ProcessingCompleted => Status::Ready,
            ContentEvent::ProcessingFailed { .. } => Status::Failed,
            ContentEvent::Published => Status::Published,
        }
    }
}

/// Why a piece of content refuses a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum ContentError {
    #[error("it is already uploaded")]
    AlreadyUploaded,
    #[error("a title must not be blank")]
    BlankTitle,
    #[error("it was never uploaded")]
    NotUploaded,
    #[error("only uploaded or failed content can be processed, it is {0}")]
    CannotProcess(Status),
    #[error("it is not being processed, it is {0}")]
    NotProcessing(Status),
    #[error("only processed content can be published, it is {0}")]
    NotReady(Status),
    #[error("it is already published")]
    AlreadyPublished,
}

/// The state a decision needs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Content {
    pub status: Option<Status>,
}

impl Aggregate for Content {
    const TYPE: &'static str = "content";
    type Command = ContentCommand;
    type Event = ContentEvent;
    type Error = ContentError;

    fn decide(&self, command: &ContentCommand) -> Result<Vec<ContentEvent>, ContentError> {
        use ContentCommand as C;
        let status = match (self.status, command) {
            (Some(_), C::Upload { .. }) => return Err(ContentError::AlreadyUploaded),
            (None, C::Upload { title, kind }) => {
                if title.trim().is_empty() {
                    return Err(ContentError::BlankTitle);
                }
                return Ok(vec![ContentEvent::Uploaded {
                    title: title.trim().to_owned(),
                    kind: *kind,
                }]);
            }
            (None, _) => return Err(ContentError::NotUploaded),
            (Some(status), _) => status,
        };
        let event = match (status, command) {
            (Status::Uploaded | Status::Failed, C::StartProcessing) => ContentEvent::ProcessingStarted,
            (_, C::StartProcessing) => return Err(ContentError::CannotProcess(status)),
            (Status::Processing, C::CompleteProcessing) => ContentEvent::ProcessingCompleted,
            (Status::Processing, C::FailProcessing { reason }) => ContentEvent::ProcessingFailed {
                reason: reason.clone(),
            },
            (_, C::CompleteProcessing | C::FailProcessing { .. }) => {
                return Err(ContentError::NotProcessing(status));
            }
            (Status::Ready, C::Publish) => ContentEvent::Published,
            (Status::Published, C::Publish) => return Err(ContentError::AlreadyPublished),
            (_, C::Publish) => return Err(ContentError::NotReady(status)),
            (_, C::Upload { .. }) => unreachable!("handled above"),
        };
        Ok(vec![event])
    }

    fn apply(&mut self, event: &ContentEvent) {
        self.status = Some(event.status());
    }
}

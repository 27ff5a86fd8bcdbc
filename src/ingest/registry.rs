//! The schema registry (a Confluent-compatible API, such as Apicurio's `ccompat/v7`): writer
//! schemas looked up by id when decoding, our own schemas registered when encoding.
//!
//! Only the rare round trips go through here: the decoder and the encoders cache what they
//! learn, so no record costs an HTTP call once its schema id is known.

use std::time::Duration;

use schema_registry_converter::async_impl::schema_registry::{
    get_schema_by_id, get_schema_by_subject, post_schema, SrSettings,
};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{
    RawError, RegisteredSchema, SchemaType, SubjectNameStrategy, SuppliedSchema,
};
use serde::{Deserialize, Serialize};

/// Where the schema registry is and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Base URL of the Confluent-compatible API, for example
    /// `http://registry:8080/apis/ccompat/v7`. No default.
    pub url: String,
    /// Basic-auth user (for Confluent Cloud, the API key). Default: none.
    #[serde(default)]
    pub username: Option<String>,
    /// Basic-auth password (for Confluent Cloud, the API secret). Default: none.
    #[serde(default)]
    pub password: Option<String>,
    /// Bound on each HTTP call, connect and read, in milliseconds. Default: 10000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    10_000
}

impl RegistryConfig {
    /// A config with the default timeout and no authentication.
    pub fn new(url: impl Into<String>) -> RegistryConfig {
        RegistryConfig {
            url: url.into(),
            username: None,
            password: None,
            timeout_ms: default_timeout_ms(),
        }
    }
}

/// Why a registry call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// The registry answered that it has no schema with this id (Confluent error 40403, or a
    /// 404). Not retriable: the id in the record is wrong.
    #[error("the schema registry at {url} has no schema with id {id}")]
    UnknownId { id: u32, url: String },
    /// The registry refused to register our schema (for example, incompatible with the
    /// subject's earlier versions under its compatibility rule).
    #[error("the schema registry at {url} refused schema {subject}: {message}")]
    Refused {
        subject: String,
        url: String,
        message: String,
    },
    /// The registry could not be reached or answered with an error that may pass: retry later.
    #[error("the schema registry at {url} did not answer: {message}")]
    Unavailable { url: String, message: String },
    /// The client could not be built (a bad URL, or TLS setup).
    #[error("cannot set up a schema registry client for {url}: {message}")]
    Config { url: String, message: String },
}

impl RegistryError {
    /// True when the same call may succeed later (the registry was down or slow).
    pub fn is_retriable(&self) -> bool {
        matches!(self, RegistryError::Unavailable { .. })
    }
}

/// A schema registry client with bounded timeouts. Cheap to clone: the HTTP client inside is
/// shared.
#[derive(Clone, Debug)]
pub struct RegistryClient {
    settings: SrSettings,
    url: String,
}

/// Confluent's "schema not found" error code; Apicurio's ccompat API uses it too.
const SCHEMA_NOT_FOUND: u32 = 40403;

impl RegistryClient {
    /// Builds the client. Makes no call: an unreachable registry shows at the first lookup.
    ///
    /// Errors: [`RegistryError::Config`] when the HTTP client cannot be built.
    pub fn new(config: &RegistryConfig) -> Result<RegistryClient, RegistryError> {
        let mut builder = SrSettings::new_builder(config.url.clone());
        builder.set_timeout(Duration::from_millis(config.timeout_ms));
        if let Some(user) = &config.username {
            builder.set_basic_authorization(user, config.password.as_deref());
        }
        let client = crate::tls::client_builder().map_err(|message| RegistryError::Config {
            url: config.url.clone(),
            message,
        })?;
        let settings = builder
            .build_with(client)
            .map_err(|e| RegistryError::Config {
                url: config.url.clone(),
                message: describe(&e),
            })?;
        Ok(RegistryClient {
            settings,
            url: config.url.clone(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Fetches the schema registered under `id`.
    ///
    /// Errors: [`RegistryError::UnknownId`] when the registry has no such id,
    /// [`RegistryError::Unavailable`] for anything else (network, timeout, server error).
    pub async fn schema_by_id(&self, id: u32) -> Result<RegisteredSchema, RegistryError> {
        get_schema_by_id(id, &self.settings)
            .await
            .map_err(|e| match not_found(&e) {
                true => RegistryError::UnknownId {
                    id,
                    url: self.url.clone(),
                },
                false => RegistryError::Unavailable {
                    url: self.url.clone(),
                    message: describe(&e),
                },
            })
    }

    /// The latest schema registered for the values of `topic` (its subject `<topic>-value`),
    /// `None` when the registry has no such subject.
    ///
    /// Errors: [`RegistryError::Unavailable`] when the registry cannot answer.
    pub async fn latest_value_schema(
        &self,
        topic: &str,
    ) -> Result<Option<RegisteredSchema>, RegistryError> {
        let subject = SubjectNameStrategy::TopicNameStrategy(topic.to_owned(), false);
        match get_schema_by_subject(&self.settings, &subject).await {
            Ok(registered) => Ok(Some(registered)),
            Err(e) if client_error(&e) => Ok(None),
            Err(e) => Err(RegistryError::Unavailable {
                url: self.url.clone(),
                message: describe(&e),
            }),
        }
    }

    /// Registers an Avro schema under `subject` (or finds it already there) and returns its id.
    ///
    /// Errors: [`RegistryError::Refused`] when the registry answers with a client error (4xx),
    /// [`RegistryError::Unavailable`] otherwise.
    pub async fn register_avro(
        &self,
        subject: &str,
        full_name: &str,
        schema: &str,
    ) -> Result<u32, RegistryError> {
        let supplied = SuppliedSchema::new(
            Some(full_name.to_owned()),
            SchemaType::Avro,
            schema.to_owned(),
        );
        match post_schema(&self.settings, subject.to_owned(), supplied).await {
            Ok(registered) => Ok(registered.id),
            Err(e) if client_error(&e) => Err(RegistryError::Refused {
                subject: subject.to_owned(),
                url: self.url.clone(),
                message: describe(&e),
            }),
            Err(e) => Err(RegistryError::Unavailable {
                url: self.url.clone(),
                message: describe(&e),
            }),
        }
    }
}

/// The registry's own error answer, when the call reached it and it said no.
fn registry_answer(error: &SRCError) -> Option<&RawError> {
    std::error::Error::source(error).and_then(|source| source.downcast_ref::<RawError>())
}

fn not_found(error: &SRCError) -> bool {
    match registry_answer(error) {
        Some(raw) => raw.error_code == SCHEMA_NOT_FOUND || error.error.contains("status 404"),
        None => false,
    }
}

/// The registry answered with a 4xx: the request is wrong, retrying will not help. Confluent
/// error codes carry the HTTP status in their first three digits (40901: incompatible).
fn client_error(error: &SRCError) -> bool {
    match registry_answer(error) {
        Some(raw) => (40_000..50_000).contains(&raw.error_code) || error.error.contains("status 4"),
        None => false,
    }
}

/// The parts of an `SRCError` a person needs, without its retriable/cached flags.
fn describe(error: &SRCError) -> String {
    match &error.cause {
        Some(cause) => format!("{}: {cause}", error.error),
        None => error.error.clone(),
    }
}

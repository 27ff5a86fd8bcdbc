//! The normalized order event (contract section 1) and its validation.
//!
//! Every format the service reads (JSON lines, JSON or Avro records on Kafka) becomes an
//! [`OrderEvent`] through [`OrderEvent::validate`], so "bad input" means the same everywhere.

use std::collections::BTreeMap;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

/// One event of one order, as the event bus normalized it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderEvent {
    /// The source's business key: the same `event_id` for the same order is the same event.
    pub event_id: CompactString,
    /// The order; also the Kafka record key.
    pub order_id: CompactString,
    /// For example `OrderCreated`. Unknown types are kept, never an error.
    pub event_type: CompactString,
    /// The system that sent it.
    pub source: CompactString,
    /// When it happened at the source, epoch milliseconds.
    pub occurred_at: i64,
    #[serde(default = "default_line_of_business")]
    pub line_of_business: CompactString,
    #[serde(default = "default_marketplace")]
    pub marketplace: CompactString,
    #[serde(default)]
    pub customer_id: Option<CompactString>,
    #[serde(default)]
    pub items: Vec<Item>,
    /// A `BTreeMap` and not a `HashMap`: encodings and outputs must not depend on hash order.
    #[serde(default)]
    pub attributes: BTreeMap<CompactString, CompactString>,
}

/// One order line an event is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub asin: CompactString,
    pub qty: i32,
}

pub fn default_line_of_business() -> CompactString {
    CompactString::const_new("grocery")
}

pub fn default_marketplace() -> CompactString {
    CompactString::const_new("US")
}

/// Why an input record is not a valid event. The message is meant for a person reading a
/// dead-letter header or a line of standard error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("not a valid event: {0}")]
    Malformed(String),
    #[error("required field `{0}` is empty")]
    EmptyField(&'static str),
    #[error("item {index} (asin `{asin}`) has qty {qty}; qty must be at least 1")]
    BadQuantity {
        index: usize,
        asin: String,
        qty: i64,
    },
    #[error("item {index} has an empty asin")]
    EmptyAsin { index: usize },
}

impl EventError {
    /// A short, stable name for the error class, for metrics labels and dead-letter headers.
    pub fn class(&self) -> &'static str {
        match self {
            EventError::Malformed(_) => "malformed",
            EventError::EmptyField(_) => "empty_field",
            EventError::BadQuantity { .. } => "bad_quantity",
            EventError::EmptyAsin { .. } => "empty_asin",
        }
    }
}

impl OrderEvent {
    /// Parses one JSON event (contract section 1) and validates it.
    ///
    /// Errors: [`EventError::Malformed`] for JSON that is not an event (a missing required
    /// field, a wrong type), and the errors of [`OrderEvent::validate`].
    pub fn from_json(bytes: &[u8]) -> Result<OrderEvent, EventError> {
        // `qty` is read wide so that a value out of `i32` range is reported as a bad
        // quantity, not as a type error.
        #[derive(Deserialize)]
        struct WideItem {
            asin: CompactString,
            qty: i64,
        }
        #[derive(Deserialize)]
        struct Wire {
            event_id: CompactString,
            order_id: CompactString,
            event_type: CompactString,
            source: CompactString,
            occurred_at: i64,
            line_of_business: Option<CompactString>,
            marketplace: Option<CompactString>,
            customer_id: Option<CompactString>,
            items: Option<Vec<WideItem>>,
            attributes: Option<BTreeMap<CompactString, CompactString>>,
        }
        let wire: Wire =
            serde_json::from_slice(bytes).map_err(|e| EventError::Malformed(e.to_string()))?;
        let items = wire.items.unwrap_or_default();
        for (index, item) in items.iter().enumerate() {
            if i32::try_from(item.qty).is_err() {
                return Err(EventError::BadQuantity {
                    index,
                    asin: item.asin.to_string(),
                    qty: item.qty,
                });
            }
        }
        let event = OrderEvent {
            event_id: wire.event_id,
            order_id: wire.order_id,
            event_type: wire.event_type,
            source: wire.source,
            occurred_at: wire.occurred_at,
            line_of_business: wire
                .line_of_business
                .unwrap_or_else(default_line_of_business),
            marketplace: wire.marketplace.unwrap_or_else(default_marketplace),
            customer_id: wire.customer_id,
            items: items
                .into_iter()
                .map(|i| Item {
                    asin: i.asin,
                    qty: i.qty as i32, // range checked above
                })
                .collect(),
            attributes: wire.attributes.unwrap_or_default(),
        };
        event.validate()?;
        Ok(event)
    }

    /// Checks what the types alone cannot: required strings are not empty, every item has an
    /// ASIN and a quantity of at least 1.
    pub fn validate(&self) -> Result<(), EventError> {
        for (name, value) in [
            ("event_id", &self.event_id),
            ("order_id", &self.order_id),
            ("event_type", &self.event_type),
            ("source", &self.source),
        ] {
            if is_blank(value) {
                return Err(EventError::EmptyField(name));
            }
        }
        for (index, item) in self.items.iter().enumerate() {
            if is_blank(&item.asin) {
                return Err(EventError::EmptyAsin { index });
            }
            if item.qty < 1 {
                return Err(EventError::BadQuantity {
                    index,
                    asin: item.asin.to_string(),
                    qty: i64::from(item.qty),
                });
            }
        }
        Ok(())
    }
}

/// `s.trim().is_empty()`, answered from the first byte for the usual string that starts
/// with a visible ASCII character (`trim` decodes characters from both ends: 0.6% of a
/// pipeline run's samples for the six checks of every event).
fn is_blank(s: &str) -> bool {
    match s.as_bytes().first() {
        None => true,
        Some(&first) if first.is_ascii() && !char::from(first).is_whitespace() => false,
        Some(_) => s.trim().is_empty(),
    }
}

/// An event of order `A` for unit tests: `kind` at `at`, with `items` as (ASIN, qty).
#[cfg(test)]
pub(crate) fn test_event(id: &str, kind: &str, at: i64, items: &[(&str, i32)]) -> OrderEvent {
    OrderEvent {
        event_id: id.into(),
        order_id: "A".into(),
        event_type: kind.into(),
        source: "test".into(),
        occurred_at: at,
        line_of_business: "grocery".into(),
        marketplace: "US".into(),
        customer_id: None,
        items: items
            .iter()
            .map(|(asin, qty)| Item {
                asin: (*asin).into(),
                qty: *qty,
            })
            .collect(),
        attributes: BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_is_what_trim_leaves_empty() {
        for s in [
            "",
            " ",
            "\t\n",
            "\u{0b}",
            "\u{0c}\r",
            "\u{a0}",
            "\u{3000} ",
            " \u{2003}",
            "a",
            " a",
            "\u{0b}x",
            "\u{a0}b",
            "é",
            "x ",
            "\u{200b}",
        ] {
            assert_eq!(is_blank(s), s.trim().is_empty(), "{s:?}");
        }
    }

    const FULL: &str = r#"{"event_id":"e1","order_id":"A","event_type":"OrderCreated","source":"ordering","occurred_at":1700000000000,"line_of_business":"fresh","marketplace":"UK","customer_id":"C-1","items":[{"asin":"B1","qty":2}],"attributes":{"k":"v"}}"#;

    #[test]
    fn parses_a_full_event() {
        let event = OrderEvent::from_json(FULL.as_bytes()).unwrap();
        assert_eq!(event.order_id, "A");
        assert_eq!(event.line_of_business, "fresh");
        assert_eq!(
            event.items,
            vec![Item {
                asin: "B1".into(),
                qty: 2
            }]
        );
        assert_eq!(event.attributes.get("k").map(|v| v.as_str()), Some("v"));
    }

    #[test]
    fn optional_fields_take_their_defaults() {
        let line = r#"{"event_id":"e1","order_id":"A","event_type":"X","source":"s","occurred_at":1,"customer_id":null}"#;
        let event = OrderEvent::from_json(line.as_bytes()).unwrap();
        assert_eq!(event.line_of_business, "grocery");
        assert_eq!(event.marketplace, "US");
        assert_eq!(event.customer_id, None);
        assert!(event.items.is_empty() && event.attributes.is_empty());
    }

    #[test]
    fn bad_events_say_why() {
        let cases = [
            (
                r#"{"order_id":"A","event_type":"X","source":"s","occurred_at":1}"#,
                "malformed",
            ),
            (
                r#"{"event_id":" ","order_id":"A","event_type":"X","source":"s","occurred_at":1}"#,
                "empty_field",
            ),
            (
                r#"{"event_id":"e","order_id":"A","event_type":"X","source":"s","occurred_at":1,"items":[{"asin":"B","qty":0}]}"#,
                "bad_quantity",
            ),
            (
                r#"{"event_id":"e","order_id":"A","event_type":"X","source":"s","occurred_at":1,"items":[{"asin":"B","qty":99999999999}]}"#,
                "bad_quantity",
            ),
            (
                r#"{"event_id":"e","order_id":"A","event_type":"X","source":"s","occurred_at":1,"items":[{"asin":"","qty":1}]}"#,
                "empty_asin",
            ),
            ("not json", "malformed"),
        ];
        for (line, class) in cases {
            let error = OrderEvent::from_json(line.as_bytes()).unwrap_err();
            assert_eq!(error.class(), class, "{line}: {error}");
        }
        let missing = OrderEvent::from_json(cases[0].0.as_bytes()).unwrap_err();
        assert!(missing.to_string().contains("event_id"), "{missing}");
    }
}

//! Avro binary written by hand for our two output schemas (`avro/milestone_change.avsc`,
//! `avro/order_view.avsc`) and for the input event (`avro/order_event.avsc`, which only
//! `milestones generate` writes): straight into the output buffer, with no intermediate
//! `Value`. The unit tests read the bytes back with `apache_avro` and the schema files, so
//! the code and the schemas cannot drift apart unnoticed.

use crate::engine::{codec, MilestoneChange, OrderEvent, OrderView};
use crate::ingest::FormatError;

pub const MILESTONE_CHANGE_SCHEMA: &str = include_str!("../../avro/milestone_change.avsc");
pub const ORDER_VIEW_SCHEMA: &str = include_str!("../../avro/order_view.avsc");

/// Appends one change record in the field order of `avro/milestone_change.avsc`.
///
/// Errors: [`FormatError::OutOfRange`] for a sequence beyond `i64::MAX`.
pub fn write_change(change: &MilestoneChange, out: &mut Vec<u8>) -> Result<(), FormatError> {
    write_str(out, &change.order_id);
    write_long(out, unsigned("sequence", change.sequence)?);
    write_str(out, &change.milestone);
    write_bool(out, change.inferred);
    write_optional_long(out, change.reached_at);
    write_str(out, &change.status);
    write_array(out, &change.evidence, |out, id| write_str(out, id));
    write_str(out, &change.rules_version);
    write_optional_str(out, change.customer_id.as_deref());
    Ok(())
}

/// Appends one order view in the field order of `avro/order_view.avsc`.
///
/// Errors: [`FormatError::OutOfRange`] for counts beyond `i64::MAX`.
pub fn write_view(view: &OrderView, out: &mut Vec<u8>) -> Result<(), FormatError> {
    write_str(out, &view.order_id);
    write_optional_str(out, view.status.as_deref());
    write_bool(out, view.placeholder);
    write_array(out, &view.milestones, |out, m| {
        write_str(out, &m.name);
        write_bool(out, m.inferred);
        write_optional_long(out, m.reached_at);
    });
    write_array(out, &view.items, |out, item| {
        write_str(out, &item.asin);
        write_optional_long(out, item.ordered);
        write_long(out, item.shorted);
        write_long(out, item.substituted);
    });
    write_long(out, unsigned("events", view.events)?);
    write_long(out, unsigned("duplicates", view.duplicates)?);
    Ok(())
}

/// Appends one input event in the field order of `avro/order_event.avsc`. Cannot fail: every
/// field of an [`OrderEvent`] has an Avro type that holds it.
pub fn write_event(event: &OrderEvent, out: &mut Vec<u8>) {
    write_str(out, &event.event_id);
    write_str(out, &event.order_id);
    write_str(out, &event.event_type);
    write_str(out, &event.source);
    write_long(out, event.occurred_at);
    write_str(out, &event.line_of_business);
    write_str(out, &event.marketplace);
    write_optional_str(out, event.customer_id.as_deref());
    write_array(out, &event.items, |out, item| {
        write_str(out, &item.asin);
        write_long(out, i64::from(item.qty));
    });
    // A map is written like an array of key, value pairs.
    if !event.attributes.is_empty() {
        write_long(out, event.attributes.len() as i64);
        for (key, value) in &event.attributes {
            write_str(out, key);
            write_str(out, value);
        }
    }
    write_long(out, 0);
}

fn unsigned(field: &'static str, value: u64) -> Result<i64, FormatError> {
    i64::try_from(value).map_err(|_| FormatError::OutOfRange { field, value })
}

/// A zigzag varint: the state encoding's own.
#[inline]
fn write_long(out: &mut Vec<u8>, value: i64) {
    codec::put_i64(out, value);
}

#[inline]
fn write_bool(out: &mut Vec<u8>, value: bool) {
    out.push(u8::from(value));
}

#[inline]
fn write_str(out: &mut Vec<u8>, value: &str) {
    write_long(out, value.len() as i64);
    out.extend_from_slice(value.as_bytes());
}

/// A `["null", T]` union: branch 0 for null, branch 1 then the value.
#[inline]
fn write_optional_long(out: &mut Vec<u8>, value: Option<i64>) {
    match value {
        None => write_long(out, 0),
        Some(value) => {
            write_long(out, 1);
            write_long(out, value);
        }
    }
}

#[inline]
fn write_optional_str(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        None => write_long(out, 0),
        Some(value) => {
            write_long(out, 1);
            write_str(out, value);
        }
    }
}

/// One block holding every item, then the end marker.
#[inline]
fn write_array<T>(out: &mut Vec<u8>, items: &[T], mut write: impl FnMut(&mut Vec<u8>, &T)) {
    if !items.is_empty() {
        write_long(out, items.len() as i64);
        for item in items {
            write(out, item);
        }
    }
    write_long(out, 0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Item, ItemView, MilestoneView};
    use crate::ingest::avro::{event_from_value, read_event, ORDER_EVENT_SCHEMA};
    use apache_avro::reader::datum::GenericDatumReader;
    use apache_avro::Schema;

    /// Reads `bytes` with the schema file, checks every byte was used, and returns the JSON
    /// of the value: what a consumer using the registry would see.
    fn read_back(schema: &str, bytes: &[u8]) -> serde_json::Value {
        let schema = Schema::parse_str(schema).unwrap();
        let mut rest = bytes;
        let value = GenericDatumReader::builder(&schema)
            .build()
            .unwrap()
            .read_value(&mut rest)
            .unwrap();
        assert!(rest.is_empty(), "{} bytes left", rest.len());
        serde_json::Value::try_from(value).unwrap()
    }

    fn change(reached_at: Option<i64>, customer_id: Option<&str>) -> MilestoneChange {
        MilestoneChange {
            order_id: "A".into(),
            sequence: 300,
            milestone: "out_for_delivery".into(),
            inferred: reached_at.is_none(),
            reached_at,
            status: "delivered".into(),
            evidence: vec!["e1".into(), "e-2".into()],
            rules_version: "default-1".into(),
            customer_id: customer_id.map(Into::into),
        }
    }

    #[test]
    fn change_records_read_back_as_their_json() {
        for change in [
            change(Some(-1_700_000_000_000), Some("C-1")),
            change(None, None),
            MilestoneChange {
                evidence: vec![],
                ..change(Some(0), None)
            },
        ] {
            let mut out = Vec::new();
            write_change(&change, &mut out).unwrap();
            assert_eq!(
                read_back(MILESTONE_CHANGE_SCHEMA, &out),
                serde_json::to_value(&change).unwrap()
            );
        }
    }

    #[test]
    fn views_read_back_as_their_json() {
        let view = OrderView {
            order_id: "A".into(),
            status: Some("ready".into()),
            placeholder: false,
            milestones: vec![
                MilestoneView {
                    name: "ordered".into(),
                    inferred: false,
                    reached_at: Some(1_700_000_000_000),
                },
                MilestoneView {
                    name: "preparing".into(),
                    inferred: true,
                    reached_at: None,
                },
            ],
            items: vec![ItemView {
                asin: "B06WW2YGSJ".into(),
                ordered: Some(2),
                shorted: 1,
                substituted: 0,
            }],
            events: 4,
            duplicates: 1,
        };
        let placeholder = OrderView {
            status: None,
            placeholder: true,
            milestones: vec![],
            items: vec![ItemView {
                ordered: None,
                ..view.items[0].clone()
            }],
            ..view.clone()
        };
        for view in [view, placeholder] {
            let mut out = Vec::new();
            write_view(&view, &mut out).unwrap();
            assert_eq!(
                read_back(ORDER_VIEW_SCHEMA, &out),
                serde_json::to_value(&view).unwrap()
            );
        }
    }

    #[test]
    fn events_read_back_as_themselves() {
        let full = OrderEvent {
            event_id: "fulfillment:A:pick-1".into(),
            order_id: "A".into(),
            event_type: "ItemPicked".into(),
            source: "fulfillment".into(),
            occurred_at: -1_700_000_000_000,
            line_of_business: "3p".into(),
            marketplace: "JP".into(),
            customer_id: Some("C-1".into()),
            items: vec![
                Item {
                    asin: "B06WW2YGSJ".into(),
                    qty: 2,
                },
                Item {
                    asin: "B0-a-long-asin-beyond-inline-size".into(),
                    qty: i32::MAX,
                },
            ],
            attributes: [
                ("a".into(), "1".into()),
                ("substitute_asin".into(), "B1".into()),
            ]
            .into(),
        };
        let bare = OrderEvent {
            customer_id: None,
            items: vec![],
            attributes: Default::default(),
            ..full.clone()
        };
        let schema = Schema::parse_str(ORDER_EVENT_SCHEMA).unwrap();
        for event in [full, bare] {
            let mut out = Vec::new();
            write_event(&event, &mut out);
            // The service's direct reader and apache_avro with the schema file agree.
            assert_eq!(read_event(&out).unwrap(), event);
            let mut rest = &out[..];
            let value = GenericDatumReader::builder(&schema)
                .build()
                .unwrap()
                .read_value(&mut rest)
                .unwrap();
            assert!(rest.is_empty(), "{} bytes left", rest.len());
            assert_eq!(event_from_value(value).unwrap(), event);
        }
    }

    #[test]
    fn a_sequence_beyond_avro_long_is_an_error_not_a_wrap() {
        let change = MilestoneChange {
            sequence: u64::MAX,
            ..change(None, None)
        };
        let error = write_change(&change, &mut Vec::new()).unwrap_err();
        assert!(error.to_string().contains("sequence"), "{error}");
    }

    #[test]
    fn zigzag_matches_the_spec_examples() {
        for (value, bytes) in [
            (0i64, &[0x00u8][..]),
            (-1, &[0x01]),
            (1, &[0x02]),
            (-64, &[0x7f]),
            (64, &[0x80, 0x01]),
            (
                i64::MIN,
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            ),
        ] {
            let mut out = Vec::new();
            write_long(&mut out, value);
            assert_eq!(out, bytes, "{value}");
        }
    }
}

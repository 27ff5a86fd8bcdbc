//! Declarative milestone rules: the TOML files of `topology/`, checked and compiled.
//!
//! A rules file names milestones with ranks, what each one implies, and the evidence rules
//! that reach it (see the README's "Rules file format"). Loading refuses a file that cannot
//! work (bad syntax, an unknown milestone, a cycle, a duplicate rank, ...) with the file, the
//! line and the reason, so that a mistake never reaches a running service.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use compact_str::CompactString;
use rustc_hash::FxHashMap;
use serde::Deserialize;
use toml::Spanned;

use super::event::OrderEvent;
use super::text::same;

/// The default milestone model of the contract, shipped inside the binary.
pub const BUILTIN_RULES: &str = include_str!("../../topology/milestones.toml");
const BUILTIN_RULES_NAME: &str = "topology/milestones.toml (built in)";

/// At most this many milestones, so that a set of milestones is one `u64`.
pub const MAX_MILESTONES: usize = 64;

/// Why a rules file was refused.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}: {reason}")]
    Invalid {
        file: String,
        line: usize,
        reason: String,
    },
}

/// Index of a milestone in [`Rules::milestones`], which is sorted by rank.
pub type MilestoneId = usize;

/// A set of milestones, one bit per [`MilestoneId`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MilestoneSet(u64);

impl MilestoneSet {
    pub fn contains(self, id: MilestoneId) -> bool {
        self.0 & (1 << id) != 0
    }
    pub fn insert(&mut self, id: MilestoneId) {
        self.0 |= 1 << id;
    }
    pub fn union(self, other: MilestoneSet) -> MilestoneSet {
        MilestoneSet(self.0 | other.0)
    }
    pub fn intersection(self, other: MilestoneSet) -> MilestoneSet {
        MilestoneSet(self.0 & other.0)
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }
    /// The highest id in the set: the milestone of highest rank.
    pub fn highest(self) -> Option<MilestoneId> {
        (self.0 != 0).then(|| 63 - self.0.leading_zeros() as usize)
    }
    /// The ids in the set, ascending (by rank).
    pub fn iter(self) -> impl Iterator<Item = MilestoneId> {
        let mut bits = self.0;
        std::iter::from_fn(move || {
            (bits != 0).then(|| {
                let id = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                id
            })
        })
    }
}

/// Compiled, checked rules. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Rules {
    /// Different for every `Rules` compiled in this process, never 0: what a graph's cached
    /// type numbers and standing ([`super::graph::Derived`]) are tagged with.
    id: u64,
    version: String,
    milestones: Vec<Milestone>,
    by_name: FxHashMap<CompactString, MilestoneId>,
    /// Every event type an evidence rule names, numbered, so that matching an event
    /// against the rules compares integers, not strings.
    type_ids: FxHashMap<CompactString, TypeId>,
    /// Per type number: the evidence rules naming the type, each once; see
    /// [`Rules::rules_of_type`].
    rules_of_type: Vec<Vec<u32>>,
    /// Per evidence rule (by place): its milestone and its index among the milestone's rules.
    places: Vec<(u32, u32)>,
    /// No rule looks beyond the event it matches; see [`Rules::event_local`].
    event_local: bool,
    any_event_implies: Option<MilestoneId>,
    items: ItemRules,
}

/// The number of an event type that evidence rules name; see [`Rules::type_id`].
pub type TypeId = u32;

/// One milestone of the model.
#[derive(Debug)]
pub struct Milestone {
    pub name: CompactString,
    pub rank: u32,
    /// Every milestone this one implies, directly or through others (never itself).
    pub implies: MilestoneSet,
    /// Any one rule that holds evidences the milestone.
    pub evidence: Vec<EvidenceRule>,
    /// An order whose status is this milestone is finished: nothing more is expected of
    /// it, and it leaves the service's state after `state.finished_retention_ms`.
    pub is_final: bool,
}

/// Conditions that, all together, make the matching events evidence a milestone.
#[derive(Debug)]
pub struct EvidenceRule {
    /// The event types that can evidence the milestone.
    pub event_types: Vec<CompactString>,
    /// Each matching event must have these field values.
    pub conditions: Vec<(Field, CompactString)>,
    /// At least this many distinct matching events (default 1).
    pub at_least: usize,
    /// Every ordered item is resolved (picked, shorted or substituted in full).
    pub all_items_resolved: bool,
    /// A matching event must have occurred after some event of this type.
    pub after: Option<CompactString>,
    after_id: Option<TypeId>,
}

/// A field of an event that a rule can compare with a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Source,
    LineOfBusiness,
    Marketplace,
    CustomerId,
    Attribute(CompactString),
}

/// Which event types carry item facts.
#[derive(Debug)]
pub struct ItemRules {
    /// The event type whose `items` are the ordered quantities; until one arrives the order
    /// is a placeholder.
    pub ordered: CompactString,
    pub picked: Vec<CompactString>,
    pub shorted: Vec<CompactString>,
    pub substituted: Vec<CompactString>,
}

/// What an event says about its items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemRole {
    Ordered,
    Picked,
    Shorted,
    Substituted,
}

impl Rules {
    /// The default model of the contract, as shipped with the service.
    ///
    /// Errors only if the shipped file is broken, which a unit test rules out.
    pub fn builtin() -> Result<Rules, RulesError> {
        Rules::parse(BUILTIN_RULES, BUILTIN_RULES_NAME)
    }

    /// Reads and checks a rules file. Errors: [`RulesError::Read`] when the file cannot be
    /// read, [`RulesError::Invalid`] with the line and reason when it cannot work.
    pub fn load(path: &Path) -> Result<Rules, RulesError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| RulesError::Read {
            file: file.clone(),
            source,
        })?;
        Rules::parse(&text, &file)
    }

    /// Checks rules given as text; `file` names them in errors.
    pub fn parse(text: &str, file: &str) -> Result<Rules, RulesError> {
        let invalid = |span: Option<Range<usize>>, reason: String| RulesError::Invalid {
            file: file.to_string(),
            line: span.map_or(1, |s| line_of(text, s.start)),
            reason,
        };
        let raw: RawRules =
            toml::from_str(text).map_err(|e| invalid(e.span(), e.message().to_string()))?;
        compile(raw).map_err(|Refusal { span, reason }| invalid(Some(span), reason))
    }

    /// See the field: a number of these rules, unique within the process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The version of these rules; it lands in every output record.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The milestones, in rank order.
    pub fn milestones(&self) -> &[Milestone] {
        &self.milestones
    }

    /// The evidence rules that name the event type numbered `type_id`, each by its place
    /// among all rules: milestone after milestone (rank order), a milestone's rules in the
    /// order written.
    pub fn rules_of_type(&self, type_id: TypeId) -> &[u32] {
        self.rules_of_type
            .get(type_id as usize)
            .map_or(&[], Vec::as_slice)
    }

    /// The evidence rule at `place` (see [`Rules::rules_of_type`]) and its milestone.
    pub fn rule_at(&self, place: u32) -> (MilestoneId, &EvidenceRule) {
        let (milestone, index) = self.places[place as usize];
        let milestone = milestone as MilestoneId;
        (
            milestone,
            &self.milestones[milestone].evidence[index as usize],
        )
    }

    /// Whether every evidence rule decides on each event alone: none asks for at least two
    /// events, for an event after another or for every item resolved. Then a new event
    /// adds evidence only to the milestones whose rules it matches, and never changes what
    /// earlier events evidence, so the engine settles an order one event at a time.
    pub fn event_local(&self) -> bool {
        self.event_local
    }

    /// The milestones reached when `evidenced` are: those and every milestone they imply,
    /// and, when the order has any event, the milestone any event implies with its own.
    pub fn reached_by(&self, evidenced: MilestoneSet, any_event: bool) -> MilestoneSet {
        let mut reached = evidenced;
        for id in evidenced.iter() {
            reached = reached.union(self.milestones[id].implies);
        }
        if let Some(id) = self.any_event_implies.filter(|_| any_event) {
            reached.insert(id);
            reached = reached.union(self.milestones[id].implies);
        }
        reached
    }

    /// The number of an event type some evidence rule names; `None` for any other type.
    pub fn type_id(&self, event_type: &str) -> Option<TypeId> {
        self.type_ids.get(event_type).copied()
    }

    pub fn milestone_id(&self, name: &str) -> Option<MilestoneId> {
        self.by_name.get(name).copied()
    }

    /// The milestone that any event at all implies (`ordered` in the default model).
    pub fn any_event_implies(&self) -> Option<MilestoneId> {
        self.any_event_implies
    }

    /// What the event says about its items, if anything.
    pub fn item_role(&self, event_type: &str) -> Option<ItemRole> {
        let items = &self.items;
        if same(&items.ordered, event_type) {
            Some(ItemRole::Ordered)
        } else if items.picked.iter().any(|t| same(t, event_type)) {
            Some(ItemRole::Picked)
        } else if items.shorted.iter().any(|t| same(t, event_type)) {
            Some(ItemRole::Shorted)
        } else if items.substituted.iter().any(|t| same(t, event_type)) {
            Some(ItemRole::Substituted)
        } else {
            None
        }
    }
}

impl fmt::Display for Rules {
    /// A summary for humans: version and milestones with what evidences them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "rules version {}", self.version)?;
        for m in &self.milestones {
            let implies: Vec<&str> = m
                .implies
                .iter()
                .map(|id| self.milestones[id].name.as_str())
                .collect();
            write!(f, "  {:>4} {}", m.rank, m.name)?;
            if !implies.is_empty() {
                write!(f, " (implies {})", implies.join(", "))?;
            }
            if self.milestone_id(&m.name) == self.any_event_implies {
                write!(f, " (implied by any event)")?;
            }
            writeln!(f)?;
            for rule in &m.evidence {
                writeln!(f, "         <- {rule}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for EvidenceRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.at_least > 1 {
            write!(f, "at least {} of ", self.at_least)?;
        }
        write!(f, "{}", self.event_types.join(" | "))?;
        for (field, value) in &self.conditions {
            write!(f, " where {field} = {value:?}")?;
        }
        if let Some(after) = &self.after {
            write!(f, " after {after}")?;
        }
        if self.all_items_resolved {
            write!(f, " when every item is resolved")?;
        }
        Ok(())
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Source => f.write_str("source"),
            Field::LineOfBusiness => f.write_str("line_of_business"),
            Field::Marketplace => f.write_str("marketplace"),
            Field::CustomerId => f.write_str("customer_id"),
            Field::Attribute(name) => write!(f, "attributes.{name}"),
        }
    }
}

impl Field {
    fn parse(key: &str) -> Option<Field> {
        match key {
            "source" => Some(Field::Source),
            "line_of_business" => Some(Field::LineOfBusiness),
            "marketplace" => Some(Field::Marketplace),
            "customer_id" => Some(Field::CustomerId),
            _ => key
                .strip_prefix("attributes.")
                .filter(|name| !name.is_empty())
                .map(|name| Field::Attribute(name.into())),
        }
    }

    /// The event's value of this field, if it has one.
    pub fn value<'e>(&self, event: &'e OrderEvent) -> Option<&'e str> {
        match self {
            Field::Source => Some(&event.source),
            Field::LineOfBusiness => Some(&event.line_of_business),
            Field::Marketplace => Some(&event.marketplace),
            Field::CustomerId => event.customer_id.as_deref(),
            Field::Attribute(name) => event.attributes.get(name.as_str()).map(|v| v.as_str()),
        }
    }
}

impl EvidenceRule {
    /// Whether the event has the field values the rule asks for, whatever its type: with a
    /// type the rule names ([`Rules::rules_of_type`]), it can count as evidence under this
    /// rule on its own (the order-wide conditions are checked by the engine).
    pub fn conditions_hold(&self, event: &OrderEvent) -> bool {
        self.conditions
            .iter()
            .all(|(field, value)| field.value(event) == Some(value.as_str()))
    }

    /// The type number of [`EvidenceRule::after`].
    pub fn after_id(&self) -> Option<TypeId> {
        self.after_id
    }
}

// ---- The file as written ------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    version: Spanned<String>,
    #[serde(default)]
    order: RawOrder,
    items: Spanned<RawItems>,
    #[serde(rename = "milestone", default)]
    milestones: Vec<Spanned<RawMilestone>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawOrder {
    any_event_implies: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawItems {
    ordered: Spanned<String>,
    #[serde(default)]
    picked: Vec<Spanned<String>>,
    #[serde(default)]
    shorted: Vec<Spanned<String>>,
    #[serde(default)]
    substituted: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMilestone {
    name: Spanned<String>,
    rank: Spanned<i64>,
    #[serde(default)]
    implies: Vec<Spanned<String>>,
    #[serde(default)]
    evidence: Vec<Spanned<RawEvidence>>,
    #[serde(rename = "final", default)]
    is_final: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvidence {
    event_types: Spanned<Vec<Spanned<String>>>,
    #[serde(rename = "where", default)]
    conditions: BTreeMap<String, String>,
    at_least: Option<Spanned<i64>>,
    #[serde(default)]
    all_items_resolved: bool,
    after: Option<Spanned<String>>,
}

/// A reason to refuse the file, with the place it applies to.
struct Refusal {
    span: Range<usize>,
    reason: String,
}

fn refuse<T>(span: Range<usize>, reason: String) -> Result<T, Refusal> {
    Err(Refusal { span, reason })
}

fn line_of(text: &str, offset: usize) -> usize {
    let offset = offset.min(text.len());
    text.as_bytes()[..offset]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn event_type(name: &Spanned<String>) -> Result<CompactString, Refusal> {
    if name.get_ref().trim().is_empty() {
        return refuse(name.span(), "an event type cannot be empty".into());
    }
    Ok(name.get_ref().as_str().into())
}

fn event_types(names: &[Spanned<String>]) -> Result<Vec<CompactString>, Refusal> {
    names.iter().map(event_type).collect()
}

fn compile(raw: RawRules) -> Result<Rules, Refusal> {
    if raw.version.get_ref().trim().is_empty() {
        return refuse(raw.version.span(), "`version` cannot be empty".into());
    }
    if raw.milestones.is_empty() {
        return refuse(0..0, "no `[[milestone]]` is defined".into());
    }
    if raw.milestones.len() > MAX_MILESTONES {
        return refuse(
            raw.milestones[MAX_MILESTONES].span(),
            format!("more than {MAX_MILESTONES} milestones"),
        );
    }

    // Milestones sorted by rank: the id of a milestone is its place in rank order.
    let mut order: Vec<&Spanned<RawMilestone>> = raw.milestones.iter().collect();
    order.sort_by_key(|m| *m.get_ref().rank.get_ref());
    let mut by_name = FxHashMap::default();
    for (id, m) in order.iter().enumerate() {
        let m = m.get_ref();
        let name = m.name.get_ref();
        if name.trim().is_empty() {
            return refuse(m.name.span(), "a milestone name cannot be empty".into());
        }
        if *m.rank.get_ref() < 0 || *m.rank.get_ref() > i64::from(u32::MAX) {
            return refuse(
                m.rank.span(),
                format!("rank {} is out of range", m.rank.get_ref()),
            );
        }
        if by_name
            .insert(CompactString::from(name.as_str()), id)
            .is_some()
        {
            return refuse(
                m.name.span(),
                format!("milestone `{name}` is defined twice"),
            );
        }
        if id > 0 && order[id - 1].get_ref().rank.get_ref() == m.rank.get_ref() {
            return refuse(
                m.rank.span(),
                format!(
                    "duplicate rank {}: `{}` and `{name}` both have it",
                    m.rank.get_ref(),
                    order[id - 1].get_ref().name.get_ref()
                ),
            );
        }
    }
    let lookup = |name: &Spanned<String>, what: &str| -> Result<MilestoneId, Refusal> {
        by_name
            .get(name.get_ref().as_str())
            .copied()
            .ok_or_else(|| Refusal {
                span: name.span(),
                reason: format!("{what} names unknown milestone `{}`", name.get_ref()),
            })
    };

    // Direct implications, checked for unknown names, then for cycles, then for rank.
    let mut direct: Vec<Vec<MilestoneId>> = Vec::with_capacity(order.len());
    for m in &order {
        let m = m.get_ref();
        let ids = m
            .implies
            .iter()
            .map(|n| lookup(n, &format!("`{}` implies", m.name.get_ref())))
            .collect::<Result<Vec<_>, _>>()?;
        direct.push(ids);
    }
    if let Some(cycle) = find_cycle(&direct) {
        let names: Vec<&str> = cycle
            .iter()
            .map(|&id| order[id].get_ref().name.get_ref().as_str())
            .collect();
        return refuse(
            order[cycle[0]].get_ref().name.span(),
            format!("implication cycle: {}", names.join(" -> ")),
        );
    }
    for (id, m) in order.iter().enumerate() {
        let m = m.get_ref();
        for (target, written) in direct[id].iter().zip(&m.implies) {
            if *target >= id {
                return refuse(
                    written.span(),
                    format!(
                        "`{}` (rank {}) implies `{}` (rank {}): a milestone implies only \
                         milestones of lower rank",
                        m.name.get_ref(),
                        m.rank.get_ref(),
                        written.get_ref(),
                        order[*target].get_ref().rank.get_ref()
                    ),
                );
            }
        }
    }
    // Transitive closure; ids are in rank order and implications point down, so one pass
    // from the lowest rank up sees every target's closure complete.
    let mut closure = vec![MilestoneSet::default(); order.len()];
    for id in 0..order.len() {
        let mut set = MilestoneSet::default();
        for &target in &direct[id] {
            set.insert(target);
            set = set.union(closure[target]);
        }
        closure[id] = set;
    }

    let mut milestones = Vec::with_capacity(order.len());
    for (id, m) in order.iter().enumerate() {
        let m = m.get_ref();
        let evidence = m
            .evidence
            .iter()
            .map(compile_evidence)
            .collect::<Result<Vec<_>, _>>()?;
        milestones.push(Milestone {
            name: m.name.get_ref().as_str().into(),
            rank: *m.rank.get_ref() as u32, // range checked above
            implies: closure[id],
            evidence,
            is_final: m.is_final,
        });
    }

    // Number every event type the rules name and, per number, list the rules (by place)
    // whose types include it.
    let mut type_ids: FxHashMap<CompactString, TypeId> = FxHashMap::default();
    let mut rules_of_type: Vec<Vec<u32>> = Vec::new();
    let places: Vec<(u32, u32)> = milestones
        .iter()
        .enumerate()
        .flat_map(|(id, m)| (0..m.evidence.len()).map(move |index| (id as u32, index as u32)))
        .collect();
    let evidence_rules = milestones.iter_mut().flat_map(|m| m.evidence.iter_mut());
    for (place, rule) in evidence_rules.enumerate() {
        let mut number = |t: &CompactString| {
            let next = type_ids.len() as TypeId;
            *type_ids.entry(t.clone()).or_insert(next)
        };
        for t in &rule.event_types {
            let id = number(t) as usize;
            if rules_of_type.len() <= id {
                rules_of_type.resize_with(id + 1, Vec::new);
            }
            let rules = &mut rules_of_type[id];
            if rules.last() != Some(&(place as u32)) {
                rules.push(place as u32);
            }
        }
        rule.after_id = rule.after.as_ref().map(&mut number);
    }

    let any_event_implies = raw
        .order
        .any_event_implies
        .as_ref()
        .map(|n| lookup(n, "`order.any_event_implies`"))
        .transpose()?;
    let items = raw.items.get_ref();
    let items = ItemRules {
        ordered: event_type(&items.ordered)?,
        picked: event_types(&items.picked)?,
        shorted: event_types(&items.shorted)?,
        substituted: event_types(&items.substituted)?,
    };
    let event_local = milestones
        .iter()
        .flat_map(|m| &m.evidence)
        .all(|rule| rule.at_least <= 1 && rule.after.is_none() && !rule.all_items_resolved);
    static COMPILED: AtomicU64 = AtomicU64::new(0);
    Ok(Rules {
        id: COMPILED.fetch_add(1, Ordering::Relaxed) + 1,
        version: raw.version.into_inner(),
        milestones,
        by_name,
        type_ids,
        rules_of_type,
        places,
        event_local,
        any_event_implies,
        items,
    })
}

fn compile_evidence(raw: &Spanned<RawEvidence>) -> Result<EvidenceRule, Refusal> {
    let span = raw.span();
    let raw = raw.get_ref();
    if raw.event_types.get_ref().is_empty() {
        return refuse(
            raw.event_types.span(),
            "`event_types` cannot be empty".into(),
        );
    }
    let conditions = raw
        .conditions
        .iter()
        .map(|(key, value)| match Field::parse(key) {
            Some(field) => Ok((field, CompactString::from(value.as_str()))),
            None => refuse(
                span.clone(),
                format!(
                    "`where` cannot compare `{key}`: use source, line_of_business, \
                     marketplace, customer_id or attributes.NAME"
                ),
            ),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let at_least = match &raw.at_least {
        None => 1,
        Some(n) if *n.get_ref() >= 1 => *n.get_ref() as usize,
        Some(n) => {
            return refuse(
                n.span(),
                format!("`at_least` is {}; it must be at least 1", n.get_ref()),
            )
        }
    };
    Ok(EvidenceRule {
        event_types: event_types(raw.event_types.get_ref())?,
        conditions,
        at_least,
        all_items_resolved: raw.all_items_resolved,
        after: raw.after.as_ref().map(event_type).transpose()?,
        after_id: None,
    })
}

/// A cycle in the implication graph, as the milestones along it (first repeated at the end).
fn find_cycle(direct: &[Vec<MilestoneId>]) -> Option<Vec<MilestoneId>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    fn visit(
        id: MilestoneId,
        direct: &[Vec<MilestoneId>],
        marks: &mut [Mark],
        path: &mut Vec<MilestoneId>,
    ) -> Option<Vec<MilestoneId>> {
        marks[id] = Mark::OnPath;
        path.push(id);
        for &next in &direct[id] {
            match marks[next] {
                Mark::OnPath => {
                    let start = path.iter().position(|&p| p == next).unwrap_or(0);
                    let mut cycle = path[start..].to_vec();
                    cycle.push(next);
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(cycle) = visit(next, direct, marks, path) {
                        return Some(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks[id] = Mark::Done;
        None
    }
    let mut marks = vec![Mark::New; direct.len()];
    (0..direct.len()).find_map(|id| {
        (marks[id] == Mark::New)
            .then(|| visit(id, direct, &mut marks, &mut Vec::new()))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_model_is_the_contract() {
        let rules = Rules::builtin().unwrap();
        let names: Vec<(&str, u32)> = rules
            .milestones()
            .iter()
            .map(|m| (m.name.as_str(), m.rank))
            .collect();
        assert_eq!(
            names,
            [
                ("ordered", 10),
                ("preparing", 20),
                ("ready", 30),
                ("out_for_delivery", 40),
                ("delivered", 50),
                ("cancelled", 60)
            ]
        );
        let id = |n| rules.milestone_id(n).unwrap();
        let delivered = &rules.milestones()[id("delivered")];
        for lower in ["ordered", "preparing", "ready", "out_for_delivery"] {
            assert!(
                delivered.implies.contains(id(lower)),
                "delivered implies {lower}"
            );
        }
        let cancelled = &rules.milestones()[id("cancelled")];
        assert_eq!(
            cancelled.implies.iter().collect::<Vec<_>>(),
            vec![id("ordered")]
        );
        assert_eq!(rules.any_event_implies(), Some(id("ordered")));
    }

    const MINIMAL: &str = r#"
version = "t1"
[items]
ordered = "OrderCreated"
[[milestone]]
name = "ordered"
rank = 10
evidence = [{ event_types = ["OrderCreated"] }]
[[milestone]]
name = "done"
rank = 20
implies = ["ordered"]
evidence = [{ event_types = ["Done"] }]
"#;

    fn refusal(text: &str) -> (usize, String) {
        match Rules::parse(text, "rules.toml") {
            Err(RulesError::Invalid { file, line, reason }) => {
                assert_eq!(file, "rules.toml");
                (line, reason)
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_minimal_file_loads() {
        let rules = Rules::parse(MINIMAL, "rules.toml").unwrap();
        assert_eq!(rules.version(), "t1");
        assert_eq!(rules.milestones().len(), 2);
    }

    #[test]
    fn bad_files_are_refused_with_line_and_reason() {
        let (line, reason) =
            refusal(&MINIMAL.replace("implies = [\"ordered\"]", "implies = [\"shipped\"]"));
        assert_eq!(line, 12);
        assert!(reason.contains("unknown milestone `shipped`"), "{reason}");

        let (line, reason) = refusal(&MINIMAL.replace("rank = 20", "rank = 10"));
        assert_eq!(line, 11);
        assert!(reason.contains("duplicate rank 10"), "{reason}");

        let (line, reason) =
            refusal(&MINIMAL.replace("name = \"done\"", "name = \"done\"\nnope = 1"));
        assert_eq!(line, 11);
        assert!(reason.contains("nope"), "{reason}");

        let (line, reason) = refusal(&MINIMAL.replace("rank = 20\n", "rank = \n"));
        assert_eq!(line, 11);
        assert!(!reason.is_empty());

        let (_, reason) =
            refusal(&MINIMAL.replace("[{ event_types = [\"Done\"] }]", "[{ event_types = [] }]"));
        assert!(reason.contains("cannot be empty"), "{reason}");

        let (_, reason) = refusal(&MINIMAL.replace(
            "[{ event_types = [\"Done\"] }]",
            "[{ event_types = [\"Done\"], where = { colour = \"red\" } }]",
        ));
        assert!(reason.contains("colour"), "{reason}");
    }

    #[test]
    fn cycles_and_upward_implications_are_refused() {
        let cyclic = MINIMAL.replace("rank = 10\n", "rank = 10\nimplies = [\"done\"]\n");
        let (line, reason) = refusal(&cyclic);
        assert!(
            reason.contains("implication cycle: ordered -> done -> ordered"),
            "{reason}"
        );
        assert_eq!(line, 6);

        let upward = MINIMAL.replace("rank = 10\n", "rank = 30\n");
        let (_, reason) = refusal(&upward);
        assert!(reason.contains("lower rank"), "{reason}");
    }

    #[test]
    fn line_numbers_count_from_one() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 99), 3);
    }
}

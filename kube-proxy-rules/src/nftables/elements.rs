//! The backend's memory of the set and map elements a transaction leaves
//! ([`Elements`]), which incremental syncs diff against.
//!
//! At 10,000 services × 10 endpoints (endpoint-maps layout) it holds
//! ~220,000 elements, 200,000 of them in two forms: `endpoint-dnat` slots
//! (`17 : 10.0.3.7 . 8080`, one writer each) and `endpoint-hairpin` /
//! `cluster-ips` addresses (`10.0.3.7 . 10.0.3.7`, no value, an owner count).
//! Kept as text with their [`ElementData`] in a hash map those cost ~135
//! bytes each; kept by form (a slot-indexed vector, an address map) 30–50.
//! Anything not in its container's form (a slot whose element has two
//! writers, a key that does not parse back to itself) stays in the text map:
//! the form is a storage choice, never a change of what is remembered.

use std::collections::HashMap;
use std::net::IpAddr;

use super::render::{Container, CONTAINERS};
use super::text::ElemText;
use crate::model::ServiceKey;

/// What an element holds besides its key: the verdict (`goto service-…`,
/// empty for a set) and its comment. A fresh full sync writes both, so an
/// incremental one re-creates an element when either changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ElementData {
    pub value: ElemText,
    pub comment: Option<Box<str>>,
    /// How many services want this element (an endpoint's hairpin element
    /// is shared by every service it backs): deleted when the last one goes.
    pub owners: u32,
    /// A map element's service (None for set elements: they carry no value).
    pub writer: Option<Writer>,
    /// A map element several services want (the same externalIP and port in
    /// two Services): what each wants. The last service in name order wins,
    /// as in a full sync, which writes them in that order.
    /// Boxed: almost every element has none (the field is 8 bytes, not 24).
    pub contenders: Option<Box<Contenders>>,
}

/// A service as the writer of map elements: one allocation per service per
/// render, shared by all its elements (at 10,000 services × 10 endpoints a
/// copy of the service's name in each element was ~10 MiB).
pub type Writer = std::sync::Arc<ServiceKey>;

/// What each service that wants a shared map element wants: (writer, value, comment).
pub type Contenders = Vec<(Writer, ElemText, Option<Box<str>>)>;

/// How far beyond the slot vector's end a slot key may be to be kept in it.
const MAX_SLOT_GAP: usize = 1 << 16;

/// How a container's keys look, which decides how they are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// `endpoint-dnat*`: a slot number.
    Slot,
    /// `cluster-ips`: an address.
    Ip,
    /// `endpoint-hairpin`: `ip . ip`, the same address twice.
    IpPair,
    Text,
}

impl Form {
    fn of(c: Container) -> Form {
        match c {
            Container::EndpointDnat | Container::EndpointDnatUdp | Container::EndpointDnatSctp => Form::Slot,
            Container::ClusterIps => Form::Ip,
            Container::EndpointHairpin => Form::IpPair,
            _ => Form::Text,
        }
    }
}

/// The slot number of a key, if the key is exactly its decimal form.
fn slot_of(key: &str) -> Option<usize> {
    let n: u32 = key.parse().ok()?;
    (n.to_string() == key).then_some(n as usize)
}

/// The address of a key of an address form, if the key is exactly how
/// that address is written.
fn ip_of(form: Form, key: &str) -> Option<IpAddr> {
    let ip: IpAddr = match form {
        Form::Ip => key.parse().ok()?,
        Form::IpPair => key.split(" . ").next()?.parse().ok()?,
        Form::Slot | Form::Text => return None,
    };
    (ip_key(form, ip) == key).then_some(ip)
}

fn ip_key(form: Form, ip: IpAddr) -> String {
    if form == Form::IpPair {
        format!("{ip} . {ip}")
    } else {
        ip.to_string()
    }
}

/// One set's or map's elements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Store {
    /// Slot form: by slot number, elements with one writer, one owner and
    /// no comment (no trailing `None`s, so equal contents compare equal).
    slots: Vec<Option<(ElemText, Writer)>>,
    slot_count: usize,
    /// Address forms: owners per address (set elements: no value, comment or writer).
    ips: HashMap<IpAddr, u32>,
    /// Everything else.
    text: HashMap<ElemText, ElementData>,
}

impl Store {
    fn get(&self, form: Form, key: &str) -> Option<ElementData> {
        if let Some(d) = self.text.get(key) {
            return Some(d.clone());
        }
        match form {
            Form::Slot => {
                let (value, writer) = self.slots.get(slot_of(key)?)?.as_ref()?;
                Some(ElementData {
                    value: value.clone(),
                    owners: 1,
                    writer: Some(writer.clone()),
                    ..Default::default()
                })
            }
            Form::Ip | Form::IpPair => {
                let owners = *self.ips.get(&ip_of(form, key)?)?;
                Some(ElementData { owners, ..Default::default() })
            }
            Form::Text => None,
        }
    }

    fn insert(&mut self, form: Form, key: &ElemText, d: ElementData) {
        self.remove(form, key);
        let plain_slot = d.comment.is_none() && d.owners == 1 && d.contenders.is_none();
        let plain_set =
            d.value.is_empty() && d.comment.is_none() && d.writer.is_none() && d.contenders.is_none();
        match form {
            Form::Slot if plain_slot => {
                // Slots are allocated from the bottom, so the vector grows by
                // a service's endpoints at a time; a key far beyond its end
                // (not one of ours) is kept as text rather than allocate for it.
                let near = |i: &usize| *i <= self.slots.len() + MAX_SLOT_GAP;
                if let (Some(i), Some(w)) = (slot_of(key).filter(near), d.writer.clone()) {
                    if self.slots.len() <= i {
                        self.slots.resize(i + 1, None);
                    }
                    self.slots[i] = Some((d.value, w));
                    self.slot_count += 1;
                    return;
                }
            }
            Form::Ip | Form::IpPair if plain_set => {
                if let Some(ip) = ip_of(form, key) {
                    self.ips.insert(ip, d.owners);
                    return;
                }
            }
            _ => {}
        }
        self.text.insert(key.clone(), d);
    }

    fn remove(&mut self, form: Form, key: &str) {
        if self.text.remove(key).is_some() {
            return;
        }
        match form {
            Form::Slot => {
                if let Some(cell) = slot_of(key).and_then(|i| self.slots.get_mut(i)) {
                    if cell.take().is_some() {
                        self.slot_count -= 1;
                    }
                    while matches!(self.slots.last(), Some(None)) {
                        self.slots.pop();
                    }
                }
            }
            Form::Ip | Form::IpPair => {
                if let Some(ip) = ip_of(form, key) {
                    self.ips.remove(&ip);
                }
            }
            Form::Text => {}
        }
    }

    fn len(&self) -> usize {
        self.slot_count + self.ips.len() + self.text.len()
    }

    /// Every element, keys in order (slots by number, addresses by address,
    /// then the text keys).
    fn for_each(&self, form: Form, mut f: impl FnMut(&str, &ElementData)) {
        for (i, cell) in self.slots.iter().enumerate() {
            if let Some((value, writer)) = cell {
                let d = ElementData {
                    value: value.clone(),
                    owners: 1,
                    writer: Some(writer.clone()),
                    ..Default::default()
                };
                f(&i.to_string(), &d);
            }
        }
        let mut ips: Vec<(&IpAddr, &u32)> = self.ips.iter().collect();
        ips.sort();
        for (ip, owners) in ips {
            f(&ip_key(form, *ip), &ElementData { owners: *owners, ..Default::default() });
        }
        let mut text: Vec<(&ElemText, &ElementData)> = self.text.iter().collect();
        text.sort_by(|a, b| a.0.cmp(b.0));
        for (k, d) in text {
            f(k, d);
        }
    }
}

/// The elements of the sets and maps: key (`10.96.0.10 . tcp . 80`) →
/// value and comment, as a transaction leaves them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Elements {
    stores: [Store; CONTAINERS],
}

impl Elements {
    /// An element and what it holds (a copy: some are not kept as an
    /// [`ElementData`]).
    pub fn get(&self, c: Container, key: &str) -> Option<ElementData> {
        self.stores[c.index()].get(Form::of(c), key)
    }
    pub fn insert(&mut self, c: Container, key: &ElemText, d: ElementData) {
        self.stores[c.index()].insert(Form::of(c), key, d)
    }
    pub fn remove(&mut self, c: Container, key: &str) {
        self.stores[c.index()].remove(Form::of(c), key)
    }
    pub fn len(&self, c: Container) -> usize {
        self.stores[c.index()].len()
    }
    pub fn is_empty(&self) -> bool {
        Container::ALL.iter().all(|c| self.len(*c) == 0)
    }
    /// Every element of `c`, in key order within each form.
    pub fn for_each(&self, c: Container, f: impl FnMut(&str, &ElementData)) {
        self.stores[c.index()].for_each(Form::of(c), f)
    }
    /// Apply an incremental transaction's element changes.
    pub fn apply(&mut self, changes: &[(Container, ElemText, Option<ElementData>)]) {
        for (c, key, data) in changes {
            match data {
                Some(d) => self.insert(*c, key, d.clone()),
                None => self.remove(*c, key),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn writer(n: &str) -> Writer {
        Writer::new(("ns".into(), n.into()))
    }

    /// What the forms keep is what a plain text map would keep.
    fn as_text(e: &Elements, c: Container) -> Vec<(String, ElementData)> {
        let mut v = Vec::new();
        e.for_each(c, |k, d| v.push((k.to_string(), d.clone())));
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn data() -> impl Strategy<Value = ElementData> {
        (0u32..3, prop::option::of("[a-z]{1,3}"), any::<bool>(), "[0-9. ]{0,8}", any::<bool>()).prop_map(
            |(owners, comment, has_writer, value, contenders)| ElementData {
                value: value.as_str().into(),
                comment: comment.map(|c| c.into_boxed_str()),
                owners,
                writer: has_writer.then(|| writer("a")),
                contenders: contenders.then(|| Box::new(vec![(writer("b"), "x".into(), None)])),
            },
        )
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            (0u32..40).prop_map(|n| n.to_string()),
            Just("007".to_string()),
            Just("4000000000".to_string()),
            (0u8..4).prop_map(|n| format!("10.0.0.{n}")),
            (0u8..4).prop_map(|n| format!("10.0.0.{n} . 10.0.0.{n}")),
            Just("10.0.0.1 . 10.0.0.2".to_string()),
            Just("fd00::1 . fd00::1".to_string()),
            Just("10.0.0.1 . tcp . 80".to_string()),
        ]
    }

    proptest! {
        #[test]
        fn every_form_keeps_what_a_text_map_keeps(
            ops in prop::collection::vec((0usize..4, key(), prop::option::of(data())), 0..60)
        ) {
            let containers = [
                Container::EndpointDnat,
                Container::ClusterIps,
                Container::EndpointHairpin,
                Container::ServiceIps,
            ];
            let mut e = Elements::default();
            let mut model: [HashMap<String, ElementData>; 4] = Default::default();
            for (ci, k, d) in ops {
                let c = containers[ci];
                match d {
                    Some(d) => {
                        e.insert(c, &ElemText::new(&k), d.clone());
                        model[ci].insert(k.clone(), d);
                    }
                    None => {
                        e.remove(c, &k);
                        model[ci].remove(&k);
                    }
                }
                for (i, c) in containers.iter().enumerate() {
                    let mut want: Vec<_> = model[i].iter().map(|(k, d)| (k.clone(), d.clone())).collect();
                    want.sort_by(|a, b| a.0.cmp(&b.0));
                    prop_assert_eq!(as_text(&e, *c), want);
                    prop_assert_eq!(e.len(*c), model[i].len());
                    for (k, d) in &model[i] {
                        prop_assert_eq!(e.get(*c, k), Some(d.clone()));
                    }
                }
            }
        }
    }
}

//! XMP sidecars with Metadata Working Group face regions (`facedb export xmp`).
//!
//! Geometry: MWG (Guidelines for Handling Image Metadata 2.0, 5.9 Image Region Metadata) says
//! region metadata applies to the *stored* image: a viewer that shows a photo turned by its EXIF
//! orientation turns the regions with it. facedb stores faces in upright pixels (orientation
//! applied, then a sideways photo's own turn, `images.rotation`), so each box is turned back into
//! the stored pixels, and `AppliedToDimensions` is the stored width and height.
//!
//! Merging: a sidecar is parsed (namespace-aware, quick-xml) into a small tree; facedb's regions
//! (the ones carrying `facedb:FaceId`) are replaced, every other element, attribute, comment and
//! region is written back as it was.

use quick_xml::events::{BytesEnd, BytesStart, BytesText, Event};
use quick_xml::name::{QName, ResolveResult};
use quick_xml::reader::NsReader;
use quick_xml::Writer;
use std::collections::{HashMap, HashSet};

use crate::db::export::PhotoFaces;

pub const NS_RDF: &str = "http://www.w3.org/1999/02/22-rdf-syntax-ns#";
pub const NS_MWG_RS: &str = "http://www.metadataworkinggroup.com/schemas/regions/";
pub const NS_ST_DIM: &str = "http://ns.adobe.com/xap/1.0/sType/Dimensions#";
pub const NS_ST_AREA: &str = "http://ns.adobe.com/xmp/sType/Area#";
/// Marks the regions facedb wrote (with the face id), so a re-export replaces exactly those.
pub const NS_FACEDB: &str = "http://ns.facedb.dev/xmp/1.0/";

/// A sidecar holding nothing yet; regions are added to it like to any other.
const EMPTY: &str = concat!(
    "<?xpacket begin=\"\u{feff}\" id=\"W5M0MpCehiHzreSzNTczkc9d\"?>\n",
    "<x:xmpmeta xmlns:x=\"adobe:ns:meta/\" x:xmptk=\"facedb ",
    env!("CARGO_PKG_VERSION"),
    "\">\n<rdf:RDF xmlns:rdf=\"http://www.w3.org/1999/02/22-rdf-syntax-ns#\">\n<rdf:Description rdf:about=\"\"",
    " xmlns:mwg-rs=\"http://www.metadataworkinggroup.com/schemas/regions/\"",
    " xmlns:stDim=\"http://ns.adobe.com/xap/1.0/sType/Dimensions#\"",
    " xmlns:stArea=\"http://ns.adobe.com/xmp/sType/Area#\"",
    " xmlns:facedb=\"http://ns.facedb.dev/xmp/1.0/\"/>\n</rdf:RDF>\n</x:xmpmeta>\n",
    "<?xpacket end=\"w\"?>\n"
);

/// The prefixes facedb writes, as bits of [`Elem::bound`].
const PREFIXES: [(&str, &str); 5] =
    [("rdf", NS_RDF), ("mwg-rs", NS_MWG_RS), ("stDim", NS_ST_DIM), ("stArea", NS_ST_AREA), ("facedb", NS_FACEDB)];
const RDF: u8 = 1;
const MWG: u8 = 2;
const DIM: u8 = 4;
const AREA: u8 = 8;
const FACEDB: u8 = 16;
const ALL: u8 = 31;

/// A face region in MWG terms: centre and size as fractions of the stored image.
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    pub face_id: i64,
    pub cx: f64,
    pub cy: f64,
    pub w: f64,
    pub h: f64,
    pub name: Option<String>,
}

/// The stored image's size and the photo's faces as regions of it.
pub fn regions_of(photo: &PhotoFaces) -> ((u32, u32), Vec<Region>) {
    let (tw, th) = (f64::from(photo.width.max(1)), f64::from(photo.height.max(1)));
    let turned = matches!(photo.rotation, 90 | 270);
    let (uw, uh) = if turned { (photo.height, photo.width) } else { (photo.width, photo.height) };
    let stored = if photo.orientation >= 5 { (uh, uw) } else { (uw, uh) };
    let regions = photo
        .faces
        .iter()
        .map(|f| {
            let clamp = |v: f64| v.clamp(0.0, 1.0);
            let a = to_stored(clamp(f.x / tw), clamp(f.y / th), photo.rotation, photo.orientation);
            let b = to_stored(clamp((f.x + f.w) / tw), clamp((f.y + f.h) / th), photo.rotation, photo.orientation);
            Region {
                face_id: f.face_id,
                cx: (a.0 + b.0) / 2.0,
                cy: (a.1 + b.1) / 2.0,
                w: (a.0 - b.0).abs(),
                h: (a.1 - b.1).abs(),
                name: f.name.clone(),
            }
        })
        .collect();
    (stored, regions)
}

/// A point (fractions of the width and height) of the upright, turned image, in the stored image.
fn to_stored(u: f64, v: f64, rotation: u16, orientation: u8) -> (f64, f64) {
    // Undo facedb's clockwise turn: the image was turned by `rotation` after orientation.
    let (u, v) = match rotation {
        90 => (v, 1.0 - u),
        180 => (1.0 - u, 1.0 - v),
        270 => (1.0 - v, u),
        _ => (u, v),
    };
    // Undo EXIF orientation (the stored pixels shown as upright by orientation 1-8).
    match orientation {
        2 => (1.0 - u, v),
        3 => (1.0 - u, 1.0 - v),
        4 => (u, 1.0 - v),
        5 => (v, u),
        6 => (v, 1.0 - u),
        7 => (1.0 - v, 1.0 - u),
        8 => (1.0 - v, u),
        _ => (u, v),
    }
}

/// A parsed XML node: an element, or anything else kept as it was read.
#[derive(Clone)]
enum Node {
    Elem(Elem),
    Other(Event<'static>),
}

#[derive(Clone)]
struct Elem {
    start: BytesStart<'static>,
    /// Resolved namespace and local name.
    ns: String,
    local: String,
    /// Carries a `facedb:FaceId` attribute.
    facedb_mark: bool,
    /// Read as `<x/>`.
    empty: bool,
    /// Which of [`PREFIXES`] are bound to facedb's namespaces inside this element: an element
    /// facedb adds declares only the others (a foreign sidecar may bind them differently).
    bound: u8,
    children: Vec<Node>,
}

impl Elem {
    fn is(&self, ns: &str, local: &str) -> bool {
        self.ns == ns && self.local == local
    }

    /// A new element inside one where `scope` prefixes are bound, declaring the `needs` that are not.
    fn new(qname: &str, ns: &str, attrs: &[(&str, &str)], children: Vec<Node>, scope: u8, needs: u8) -> Self {
        let local = qname.rsplit(':').next().unwrap_or(qname).to_string();
        let mut start = BytesStart::new(qname.to_string());
        for (i, (prefix, uri)) in PREFIXES.iter().enumerate() {
            if needs & !scope & (1 << i) != 0 {
                start.push_attribute((format!("xmlns:{prefix}").as_str(), *uri));
            }
        }
        let start = start.with_attributes(attrs.iter().copied());
        let facedb_mark = attrs.iter().any(|(k, _)| *k == "facedb:FaceId");
        Elem { start, ns: ns.to_string(), local, facedb_mark, empty: children.is_empty(), bound: scope | needs, children }
    }

    fn child_mut(&mut self, ns: &str, local: &str) -> Option<&mut Elem> {
        self.children.iter_mut().find_map(|n| match n {
            Node::Elem(e) if e.is(ns, local) => Some(e),
            _ => None,
        })
    }

    /// Whether facedb wrote this (a region): it or an element inside carries facedb's mark.
    fn is_facedb(&self) -> bool {
        self.facedb_mark
            || (self.ns == NS_FACEDB && self.local == "FaceId")
            || self.children.iter().any(|n| matches!(n, Node::Elem(e) if e.is_facedb()))
    }
}

fn newline() -> Node {
    Node::Other(Event::Text(BytesText::new("\n").into_owned()))
}

fn parse(bytes: &[u8]) -> Result<Vec<Node>, String> {
    let mut reader = NsReader::from_reader(bytes);
    let mut stack: Vec<Elem> = Vec::new();
    let mut top: Vec<Node> = Vec::new();
    let push = |stack: &mut Vec<Elem>, top: &mut Vec<Node>, node: Node| match stack.last_mut() {
        Some(parent) => parent.children.push(node),
        None => top.push(node),
    };
    loop {
        let pos = reader.buffer_position();
        let (ns, event) = reader.read_resolved_event().map_err(|e| format!("not well-formed XML at byte {pos}: {e}"))?;
        let ns = match ns {
            ResolveResult::Bound(n) => n.as_ref().to_string(),
            _ => String::new(),
        };
        match event {
            Event::Start(s) => {
                let elem = element(&reader, s, ns, false);
                stack.push(elem);
            }
            Event::Empty(s) => {
                let elem = element(&reader, s, ns, true);
                push(&mut stack, &mut top, Node::Elem(elem));
            }
            Event::End(_) => {
                let elem = stack.pop().ok_or("an end tag without its start tag")?;
                push(&mut stack, &mut top, Node::Elem(elem));
            }
            Event::Eof => break,
            other => push(&mut stack, &mut top, Node::Other(other.into_owned())),
        }
    }
    if let Some(open) = stack.last() {
        return Err(format!("<{}> is never closed", open.start.name().as_ref()));
    }
    Ok(top)
}

fn element(reader: &NsReader<&[u8]>, start: BytesStart<'_>, ns: String, empty: bool) -> Elem {
    let facedb_mark = start.attributes().flatten().any(|a| {
        let (ns, local) = reader.resolver().resolve_attribute(a.key);
        matches!(ns, ResolveResult::Bound(n) if n.as_ref() == NS_FACEDB) && local.as_ref() == "FaceId"
    });
    let local = start.local_name().as_ref().to_string();
    let mut bound = 0;
    for (i, (prefix, uri)) in PREFIXES.iter().enumerate() {
        let probe = format!("{prefix}:x");
        if matches!(reader.resolver().resolve_element(QName(&probe)).0, ResolveResult::Bound(n) if n.as_ref() == *uri) {
            bound |= 1 << i;
        }
    }
    Elem { start: start.into_owned(), ns, local, facedb_mark, empty, bound, children: Vec::new() }
}

fn write(nodes: &[Node], w: &mut Writer<Vec<u8>>) -> std::io::Result<()> {
    for node in nodes {
        match node {
            Node::Elem(e) if e.empty && e.children.is_empty() => w.write_event(Event::Empty(e.start.borrow()))?,
            Node::Elem(e) => {
                w.write_event(Event::Start(e.start.borrow()))?;
                write(&e.children, w)?;
                let name = e.start.name().as_ref().to_string();
                w.write_event(Event::End(BytesEnd::new(name)))?;
            }
            Node::Other(event) => w.write_event(event.clone())?,
        }
    }
    Ok(())
}

fn find_mut<'a>(nodes: &'a mut [Node], ns: &str, local: &str) -> Option<&'a mut Elem> {
    for node in nodes {
        if let Node::Elem(e) = node {
            if e.is(ns, local) {
                return Some(e);
            }
            if let Some(found) = find_mut(&mut e.children, ns, local) {
                return Some(found);
            }
        }
    }
    None
}

fn fmt(v: f64) -> String {
    format!("{v:.6}")
}

/// `<rdf:li>` of one region, inside a bag where `scope` prefixes are bound.
fn region_li(r: &Region, scope: u8) -> Node {
    let area = Elem::new(
        "mwg-rs:Area",
        NS_MWG_RS,
        &[
            ("stArea:x", &fmt(r.cx)),
            ("stArea:y", &fmt(r.cy)),
            ("stArea:w", &fmt(r.w)),
            ("stArea:h", &fmt(r.h)),
            ("stArea:unit", "normalized"),
        ],
        Vec::new(),
        ALL,
        0,
    );
    let face_id = r.face_id.to_string();
    let mut attrs: Vec<(&str, &str)> = vec![("mwg-rs:Type", "Face")];
    let name = r.name.as_deref().map(xml_safe);
    if let Some(name) = &name {
        // The name again in facedb's namespace: a Name that differs from it is a user's edit.
        attrs.push(("mwg-rs:Name", name));
        attrs.push(("facedb:Person", name));
    }
    attrs.push(("facedb:FaceId", &face_id));
    let description = Elem::new("rdf:Description", NS_RDF, &attrs, vec![Node::Elem(area)], ALL, 0);
    Node::Elem(Elem::new("rdf:li", NS_RDF, &[], vec![Node::Elem(description)], scope, RDF | MWG | AREA | FACEDB))
}

/// `s` without what XML 1.0 forbids: control characters are dropped (tab, CR and LF become
/// spaces, as an attribute value reads them anyway), as are U+FFFE and U+FFFF.
fn xml_safe(s: &str) -> String {
    s.chars()
        .filter_map(|c| match c {
            '\t' | '\n' | '\r' => Some(' '),
            '\u{fffe}' | '\u{ffff}' => None,
            c if c.is_control() => None,
            c => Some(c),
        })
        .collect()
}

/// Attributes of `e` as written (raw, still escaped), but for `skip`.
fn raw_attrs(e: &Elem, skip: &[&str]) -> Vec<(String, String)> {
    e.start.attributes().flatten().filter(|a| !skip.contains(&a.key.0)).map(|a| (a.key.0.to_string(), a.value.to_string())).collect()
}

fn push_raw(e: &mut Elem, attrs: Vec<(String, String)>) {
    for (k, v) in attrs {
        e.start.push_attribute(quick_xml::events::attributes::Attribute { key: QName(&k), value: v.into() });
    }
}

fn is_blank(n: &Node) -> bool {
    matches!(n, Node::Other(Event::Text(t)) if t.trim().is_empty())
}

/// The face id of one of facedb's regions (an `rdf:li`), from its `facedb:FaceId`.
fn face_id_of(li: &Elem) -> Option<i64> {
    let desc = li.children.iter().find_map(|n| match n {
        Node::Elem(e) if e.is(NS_RDF, "Description") => Some(e),
        _ => None,
    })?;
    let attr = desc.start.attributes().flatten().find(|a| a.key.0 == "facedb:FaceId").map(|a| a.value.to_string());
    let elem = || {
        desc.children.iter().find_map(|n| match n {
            Node::Elem(e) if e.is(NS_FACEDB, "FaceId") => e.children.iter().find_map(|t| match t {
                Node::Other(Event::Text(t)) => Some(t.to_string()),
                _ => None,
            }),
            _ => None,
        })
    };
    attr.or_else(elem)?.trim().parse().ok()
}

/// What a user added to one of facedb's regions: everything facedb does not write there (its
/// type, face id and area; a name that is not the one facedb wrote, kept while facedb has none).
#[derive(Default)]
struct Extras {
    li_attrs: Vec<(String, String)>,
    li_nodes: Vec<Node>,
    attrs: Vec<(String, String)>,
    name_attr: Vec<(String, String)>,
    name_nodes: Vec<Node>,
    nodes: Vec<Node>,
}

impl Extras {
    fn of(li: &Elem) -> Self {
        let declared = ["xmlns:rdf", "xmlns:mwg-rs", "xmlns:stArea", "xmlns:facedb"];
        let mut x = Extras { li_attrs: raw_attrs(li, &declared), ..Extras::default() };
        for node in &li.children {
            match node {
                Node::Elem(d) if d.is(NS_RDF, "Description") => {
                    x.attrs = raw_attrs(d, &["mwg-rs:Type", "mwg-rs:Name", "facedb:FaceId", "facedb:Person"]);
                    let facedbs = raw_attrs(d, &[]).into_iter().find(|(k, _)| k == "facedb:Person").map(|(_, v)| v);
                    x.name_attr = d
                        .start
                        .attributes()
                        .flatten()
                        .filter(|a| a.key.0 == "mwg-rs:Name" && facedbs.as_deref() != Some(&*a.value))
                        .map(|a| (a.key.0.to_string(), a.value.to_string()))
                        .collect();
                    for n in &d.children {
                        match n {
                            Node::Elem(e) if e.is(NS_MWG_RS, "Area") || e.is(NS_MWG_RS, "Type") || e.is(NS_FACEDB, "FaceId") => {}
                            Node::Elem(e) if e.is(NS_MWG_RS, "Name") => x.name_nodes.push(n.clone()),
                            n if is_blank(n) => {}
                            n => x.nodes.push(n.clone()),
                        }
                    }
                }
                n if is_blank(n) => {}
                n => x.li_nodes.push(n.clone()),
            }
        }
        x
    }

    /// Nothing but a name: a region whose face is gone goes even if the user named it.
    fn is_empty(&self) -> bool {
        self.li_attrs.is_empty() && self.li_nodes.is_empty() && self.attrs.is_empty() && self.nodes.is_empty()
    }

    /// Adds these to facedb's new version of the region (`li`, as [`region_li`] makes it).
    fn apply(self, li: &mut Elem, facedb_named: bool) {
        push_raw(li, self.li_attrs);
        if let Some(Node::Elem(desc)) = li.children.first_mut() {
            push_raw(desc, self.attrs);
            if !facedb_named {
                push_raw(desc, self.name_attr);
                desc.children.extend(self.name_nodes);
            }
            desc.children.extend(self.nodes);
            desc.empty = false;
        }
        li.children.extend(self.li_nodes);
        li.empty = false;
    }
}

fn applied_to(dims: (u32, u32), scope: u8) -> Node {
    let (w, h) = (dims.0.to_string(), dims.1.to_string());
    Node::Elem(Elem::new(
        "mwg-rs:AppliedToDimensions",
        NS_MWG_RS,
        &[("stDim:w", &w), ("stDim:h", &h), ("stDim:unit", "pixel")],
        Vec::new(),
        scope,
        MWG | DIM,
    ))
}

/// What merging did.
#[derive(Debug, PartialEq, Eq)]
pub struct Merged {
    pub bytes: Vec<u8>,
    /// Regions in the sidecar that facedb did not write (kept).
    pub other_regions: usize,
}

/// A new sidecar holding `regions` of an image stored as `dims`.
pub fn new_sidecar(dims: (u32, u32), regions: &[Region]) -> Result<Merged, String> {
    merge(EMPTY.as_bytes(), dims, regions)
}

/// `existing` with facedb's regions replaced by `regions`; everything else is kept.
pub fn merge(existing: &[u8], dims: (u32, u32), regions: &[Region]) -> Result<Merged, String> {
    let mut doc = parse(existing)?;
    let rdf = find_mut(&mut doc, NS_RDF, "RDF").ok_or("it has no rdf:RDF element, so it is not XMP")?;
    let has_description = rdf.children.iter().any(|n| matches!(n, Node::Elem(e) if e.is(NS_RDF, "Description")));
    if !has_description {
        let scope = rdf.bound;
        rdf.children.push(Node::Elem(Elem::new("rdf:Description", NS_RDF, &[("rdf:about", "")], Vec::new(), scope, RDF)));
    }
    let mut other_regions = 0;
    let mut placed = false;
    for node in rdf.children.iter_mut() {
        let Node::Elem(desc) = node else { continue };
        if !desc.is(NS_RDF, "Description") {
            continue;
        }
        let Some(pos) = desc.children.iter().position(|n| matches!(n, Node::Elem(e) if e.is(NS_MWG_RS, "Regions"))) else { continue };
        let Node::Elem(regions_elem) = &mut desc.children[pos] else { continue };
        other_regions += replace_regions(regions_elem, dims, regions);
        if other_regions == 0 && regions.is_empty() {
            desc.children.remove(pos);
        }
        placed = true;
        break;
    }
    if !placed && !regions.is_empty() {
        let desc = rdf.children.iter_mut().find_map(|n| match n {
            Node::Elem(e) if e.is(NS_RDF, "Description") => Some(e),
            _ => None,
        });
        if let Some(desc) = desc {
            let mut new = Elem::new("mwg-rs:Regions", NS_MWG_RS, &[("rdf:parseType", "Resource")], Vec::new(), desc.bound, MWG | RDF);
            replace_regions(&mut new, dims, regions);
            desc.children.extend([newline(), Node::Elem(new), newline()]);
            desc.empty = false;
        }
    }
    let mut w = Writer::new(Vec::new());
    write(&doc, &mut w).map_err(|e| e.to_string())?;
    let mut bytes = w.into_inner();
    // A text file ends with a line break (the parser does not hand back the one after the end).
    if !bytes.ends_with(b"\n") {
        bytes.push(b'\n');
    }
    Ok(Merged { bytes, other_regions })
}

/// Fills a `mwg-rs:Regions` element: facedb's regions replaced, the others kept, one
/// AppliedToDimensions. Returns how many regions were kept.
fn replace_regions(regions_elem: &mut Elem, dims: (u32, u32), regions: &[Region]) -> usize {
    // The struct's fields sit in the element (rdf:parseType="Resource") or in a nested rdf:Description.
    let nested = regions_elem.children.iter().any(|n| matches!(n, Node::Elem(e) if e.is(NS_RDF, "Description")));
    let body = if nested {
        match regions_elem.child_mut(NS_RDF, "Description") {
            Some(d) => d,
            None => return 0,
        }
    } else {
        regions_elem
    };
    body.children.retain(|n| !matches!(n, Node::Elem(e) if e.is(NS_MWG_RS, "AppliedToDimensions")));
    if body.child_mut(NS_MWG_RS, "RegionList").is_none() {
        let list_scope = body.bound | MWG;
        let bag = Elem::new("rdf:Bag", NS_RDF, &[], Vec::new(), list_scope, RDF);
        let list = Elem::new("mwg-rs:RegionList", NS_MWG_RS, &[], vec![Node::Elem(bag)], body.bound, MWG);
        body.children.push(Node::Elem(list));
    }
    body.children.insert(0, applied_to(dims, body.bound));
    body.empty = false;
    let Some(list) = body.child_mut(NS_MWG_RS, "RegionList") else { return 0 };
    if list.child_mut(NS_RDF, "Bag").is_none() {
        let scope = list.bound;
        list.children.push(Node::Elem(Elem::new("rdf:Bag", NS_RDF, &[], Vec::new(), scope, RDF)));
    }
    list.empty = false;
    let Some(bag) = list.child_mut(NS_RDF, "Bag") else { return 0 };
    // facedb's regions go, with the line break written after each (so re-exports stay byte-equal);
    // what a user added to one is carried over to its new version, and one whose face is gone
    // that the user added to is kept as it is.
    let wanted: HashSet<i64> = regions.iter().map(|r| r.face_id).collect();
    let mut added: HashMap<i64, Extras> = HashMap::new();
    let mut drop_break = false;
    for node in std::mem::take(&mut bag.children) {
        let after = std::mem::take(&mut drop_break) && matches!(&node, Node::Other(Event::Text(t)) if &**t == "\n");
        match node {
            _ if after => {}
            Node::Elem(e) if e.is_facedb() => {
                let extras = Extras::of(&e);
                match face_id_of(&e).filter(|id| wanted.contains(id)) {
                    Some(id) => {
                        added.insert(id, extras);
                        drop_break = true;
                    }
                    None if extras.is_empty() => drop_break = true,
                    None => bag.children.push(Node::Elem(e)),
                }
            }
            other => bag.children.push(other),
        }
    }
    let kept = bag.children.iter().filter(|n| matches!(n, Node::Elem(e) if e.is(NS_RDF, "li"))).count();
    for r in regions {
        let mut li = region_li(r, bag.bound);
        if let (Some(extras), Node::Elem(li)) = (added.remove(&r.face_id), &mut li) {
            extras.apply(li, r.name.is_some());
        }
        bag.children.push(li);
        bag.children.push(newline());
    }
    bag.empty = false;
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::export::StoredRegion;

    fn region(id: i64, name: Option<&str>) -> Region {
        Region { face_id: id, cx: 0.25, cy: 0.5, w: 0.1, h: 0.2, name: name.map(str::to_string) }
    }

    fn photo(w: u32, h: u32, orientation: u8, rotation: u16) -> PhotoFaces {
        // A face in the top-left corner of the upright image.
        let face = StoredRegion { face_id: 1, x: 0.0, y: 0.0, w: f64::from(w) / 4.0, h: f64::from(h) / 5.0, name: None };
        PhotoFaces {
            image_id: 1,
            path: "p.jpg".into(),
            path_raw: None,
            width: w,
            height: h,
            orientation,
            rotation,
            indexed: Default::default(),
            faces: vec![face],
        }
    }

    fn area(r: &Region) -> [f64; 4] {
        [r.cx, r.cy, r.w, r.h].map(|v| (v * 1e6).round() / 1e6)
    }

    #[test]
    fn regions_turn_back_into_the_stored_image() {
        let (dims, r) = regions_of(&photo(400, 500, 1, 0));
        assert_eq!(dims, (400, 500));
        assert_eq!(area(&r[0]), [0.125, 0.1, 0.25, 0.2]);
        // Orientation 6: the stored image is the upright one turned a quarter anticlockwise,
        // so the upright top-left corner is the stored bottom-left.
        let (dims, r) = regions_of(&photo(400, 500, 6, 0));
        assert_eq!(dims, (500, 400));
        assert_eq!(area(&r[0]), [0.1, 0.875, 0.2, 0.25]);
        // Orientation 3 (upside down): bottom-right.
        let (_, r) = regions_of(&photo(400, 500, 3, 0));
        assert_eq!(area(&r[0]), [0.875, 0.9, 0.25, 0.2]);
        // Orientation 2 (mirrored): top-right.
        let (_, r) = regions_of(&photo(400, 500, 2, 0));
        assert_eq!(area(&r[0]), [0.875, 0.1, 0.25, 0.2]);
        // facedb turned a sideways scan 90° clockwise to find the face: what is top-left now was
        // bottom-left in the file.
        let (dims, r) = regions_of(&photo(400, 500, 1, 90));
        assert_eq!(dims, (500, 400));
        assert_eq!(area(&r[0]), [0.1, 0.875, 0.2, 0.25]);
    }

    #[test]
    fn merging_keeps_everything_else_and_replaces_only_facedbs_regions() {
        let foreign = r#"<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
 <rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:MWG="http://www.metadataworkinggroup.com/schemas/regions/" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:Rating="4">
  <!-- a note -->
  <dc:subject><rdf:Bag><rdf:li>holiday &amp; beach</rdf:li></rdf:Bag></dc:subject>
  <MWG:Regions rdf:parseType="Resource">
   <MWG:RegionList><rdf:Bag>
    <rdf:li><rdf:Description MWG:Name="Pet" MWG:Type="Pet"/></rdf:li>
   </rdf:Bag></MWG:RegionList>
  </MWG:Regions>
 </rdf:Description></rdf:RDF></x:xmpmeta>"#;
        let once = merge(foreign.as_bytes(), (10, 20), &[region(7, Some("Anna & Bo")), region(8, None)]).unwrap();
        assert_eq!(once.other_regions, 1);
        let text = String::from_utf8(once.bytes.clone()).unwrap();
        for kept in ["xmp:Rating=\"4\"", "<!-- a note -->", "holiday &amp; beach", "MWG:Name=\"Pet\"", "xmlns:MWG="] {
            assert!(text.contains(kept), "{kept} lost:\n{text}");
        }
        assert!(text.contains("mwg-rs:Name=\"Anna &amp; Bo\"") && text.matches("facedb:FaceId=").count() == 2, "{text}");
        assert_eq!(text.matches("AppliedToDimensions").count(), 1, "{text}");
        // Again with one face: facedb's two regions are replaced, the pet stays.
        let twice = merge(&once.bytes, (10, 20), &[region(9, None)]).unwrap();
        let text = String::from_utf8(twice.bytes).unwrap();
        assert!(
            text.matches("facedb:FaceId=").count() == 1 && text.contains("facedb:FaceId=\"9\"") && text.contains("MWG:Name=\"Pet\""),
            "{text}"
        );
        // Merging the same regions again changes nothing.
        let again = merge(&once.bytes, (10, 20), &[region(7, Some("Anna & Bo")), region(8, None)]).unwrap();
        assert_eq!(again.bytes, once.bytes);
    }

    #[test]
    fn names_lose_what_xml_forbids_and_a_users_additions_to_a_region_stay() {
        assert_eq!(xml_safe("a\u{1}b\u{1b}c\td\u{7f}\u{fffe}é"), "abc dé");
        let new = new_sidecar((10, 20), &[region(7, None)]).unwrap();
        let text = String::from_utf8(new.bytes).unwrap().replace("facedb:FaceId=", "mwg-rs:Name=\"Jo &amp; Bo\" facedb:FaceId=");
        let edited = text.replace("</rdf:Description></rdf:li>", "<!-- mine --></rdf:Description></rdf:li>");
        let merged = String::from_utf8(merge(edited.as_bytes(), (10, 20), &[region(7, None)]).unwrap().bytes).unwrap();
        assert!(merged.contains("mwg-rs:Name=\"Jo &amp; Bo\"") && merged.contains("<!-- mine -->"), "{merged}");
        // facedb names the face now: its name wins, the rest stays; the face gone, the region stays.
        let named = String::from_utf8(merge(merged.as_bytes(), (10, 20), &[region(7, Some("Ann"))]).unwrap().bytes).unwrap();
        assert!(named.contains("mwg-rs:Name=\"Ann\"") && !named.contains("Jo &amp; Bo") && named.contains("<!-- mine -->"), "{named}");
        let gone = merge(merged.as_bytes(), (10, 20), &[]).unwrap();
        assert_eq!(gone.other_regions, 1);
        assert!(String::from_utf8(gone.bytes).unwrap().contains("<!-- mine -->"));
    }

    #[test]
    fn a_new_sidecar_has_one_region_per_face_and_bad_xml_is_refused() {
        let new = new_sidecar((4032, 3024), &[region(1, Some("Anna"))]).unwrap();
        let text = String::from_utf8(new.bytes.clone()).unwrap();
        assert!(
            text.starts_with("<?xpacket begin=") && text.contains("stDim:w=\"4032\"") && text.contains("stArea:unit=\"normalized\""),
            "{text}"
        );
        // Without faces nothing is left of facedb's part.
        let emptied = merge(&new.bytes, (4032, 3024), &[]).unwrap();
        assert!(!String::from_utf8(emptied.bytes).unwrap().contains("Regions"));
        assert!(merge(b"<a><b></a>", (1, 1), &[]).is_err());
        assert!(merge(b"just text", (1, 1), &[]).unwrap_err().contains("not XMP"));
    }
}

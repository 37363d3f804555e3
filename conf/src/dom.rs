//! A small element tree read from XML, taken apart field by field. Whatever a parser does not
//! take is left over, and `finish` turns leftovers into an error naming them: an element or
//! attribute Vireo does not understand is refused, never dropped.

use quick_xml::Reader;
use quick_xml::events::Event;

/// A definition error: `field` is the path of what is wrong (`domain/devices/disk[2]/target@bus`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfError {
    pub field: String,
    pub message: String,
}

impl ConfError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> ConfError {
        ConfError {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Element {
    pub name: String,
    /// Where this element sits, for error messages.
    pub path: String,
    attrs: Vec<(String, String)>,
    children: Vec<Element>,
    text: String,
}

/// Nesting deeper than this is refused (no definition comes close; it bounds hostile input).
const MAX_DEPTH: usize = 32;

pub(crate) fn parse(xml: &str) -> Result<Element, ConfError> {
    let mut reader = Reader::from_str(xml);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let bad = |reader: &Reader<&[u8]>, err: &dyn std::fmt::Display| {
        ConfError::new(
            "xml",
            format!("malformed XML at byte {}: {err}", reader.buffer_position()),
        )
    };
    loop {
        let event = reader.read_event().map_err(|err| bad(&reader, &err))?;
        match event {
            Event::Start(_) | Event::Empty(_) if root.is_some() && stack.is_empty() => {
                return Err(ConfError::new("xml", "more than one root element"));
            }
            Event::Start(ref start) | Event::Empty(ref start) => {
                let name = start.name().as_ref().to_string();
                let path = match stack.last() {
                    Some(parent) => {
                        let index = parent.children.iter().filter(|c| c.name == name).count();
                        if index == 0 {
                            format!("{}/{name}", parent.path)
                        } else {
                            format!("{}/{name}[{}]", parent.path, index + 1)
                        }
                    }
                    None => name.clone(),
                };
                let mut element = Element {
                    name,
                    path,
                    ..Element::default()
                };
                for attr in start.attributes() {
                    let attr = attr.map_err(|err| bad(&reader, &err))?;
                    let key = attr.key.as_ref().to_string();
                    let value = attr
                        .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                        .map_err(|err| bad(&reader, &err))?
                        .into_owned();
                    if element.attrs.iter().any(|(k, _)| *k == key) {
                        return Err(ConfError::new(
                            format!("{}@{key}", element.path),
                            "attribute given twice",
                        ));
                    }
                    element.attrs.push((key, value));
                }
                if matches!(event, Event::Empty(_)) {
                    attach(&mut stack, &mut root, element);
                } else {
                    if stack.len() >= MAX_DEPTH {
                        return Err(ConfError::new(element.path, "nested too deeply"));
                    }
                    stack.push(element);
                }
            }
            Event::End(_) => {
                let element = stack
                    .pop()
                    .ok_or_else(|| ConfError::new("xml", "closing tag without an opening one"))?;
                attach(&mut stack, &mut root, element);
            }
            Event::Text(text) => {
                let text = text.xml10_content();
                match stack.last_mut() {
                    Some(element) => element.text.push_str(&text),
                    None if text.trim().is_empty() => {}
                    None => return Err(ConfError::new("xml", "text outside the root element")),
                }
            }
            Event::GeneralRef(reference) => {
                let name = reference.xml10_content().into_owned();
                let resolved = match reference.resolve_char_ref() {
                    Ok(Some(ch)) => String::from(ch),
                    _ => quick_xml::escape::resolve_predefined_entity(&name)
                        .map(str::to_string)
                        .ok_or_else(|| ConfError::new("xml", format!("unknown entity &{name};")))?,
                };
                if let Some(element) = stack.last_mut() {
                    element.text.push_str(&resolved);
                }
            }
            Event::CData(data) => {
                if let Some(element) = stack.last_mut() {
                    element.text.push_str(&data.xml10_content());
                }
            }
            Event::DocType(_) => return Err(ConfError::new("xml", "DOCTYPE is not accepted")),
            Event::Eof => break,
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
        }
    }
    if !stack.is_empty() {
        return Err(ConfError::new(
            "xml",
            format!("<{}> is not closed", stack[stack.len() - 1].name),
        ));
    }
    root.ok_or_else(|| ConfError::new("xml", "no root element"))
}

fn attach(stack: &mut [Element], root: &mut Option<Element>, element: Element) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(element),
        None => *root = Some(element),
    }
}

impl Element {
    pub fn field(&self, attr: &str) -> String {
        format!("{}@{attr}", self.path)
    }

    pub fn error(&self, message: impl Into<String>) -> ConfError {
        ConfError::new(self.path.clone(), message)
    }

    pub fn attr_error(&self, attr: &str, message: impl Into<String>) -> ConfError {
        ConfError::new(self.field(attr), message)
    }

    /// Takes an attribute.
    pub fn attr(&mut self, name: &str) -> Option<String> {
        let index = self.attrs.iter().position(|(key, _)| key == name)?;
        Some(self.attrs.remove(index).1)
    }

    pub fn required_attr(&mut self, name: &str) -> Result<String, ConfError> {
        self.attr(name)
            .ok_or_else(|| self.attr_error(name, "is required"))
    }

    /// Takes the first child of that name (a second one is left over, so `finish` reports it).
    pub fn child(&mut self, name: &str) -> Option<Element> {
        let index = self.children.iter().position(|c| c.name == name)?;
        Some(self.children.remove(index))
    }

    pub fn children(&mut self, name: &str) -> Vec<Element> {
        let (taken, kept) = std::mem::take(&mut self.children)
            .into_iter()
            .partition(|c| c.name == name);
        self.children = kept;
        taken
    }

    /// Takes every child, whatever its name (for verbatim sections such as <metadata>).
    pub fn all_children(&mut self) -> Vec<Element> {
        std::mem::take(&mut self.children)
    }

    /// Takes the text content, trimmed.
    pub fn text(&mut self) -> String {
        std::mem::take(&mut self.text).trim().to_string()
    }

    pub fn set_text(&mut self, text: String) {
        self.text = text;
    }

    pub fn set_attr(&mut self, name: &str, value: String) {
        self.attrs.push((name.to_string(), value));
    }

    /// The text of a child element, when present.
    pub fn child_text(&mut self, name: &str) -> Result<Option<String>, ConfError> {
        match self.child(name) {
            None => Ok(None),
            Some(mut child) => {
                let text = child.text();
                child.finish()?;
                Ok(Some(text))
            }
        }
    }

    /// Refuses whatever was not taken.
    pub fn finish(self) -> Result<(), ConfError> {
        if let Some((key, _)) = self.attrs.first() {
            return Err(self.attr_error(key, "attribute is not supported by Vireo"));
        }
        if let Some(child) = self.children.first() {
            return Err(ConfError::new(
                child.path.clone(),
                format!("<{}> is not supported by Vireo", child.name),
            ));
        }
        if !self.text.trim().is_empty() {
            return Err(self.error("unexpected text"));
        }
        Ok(())
    }

    /// The element back as XML (for verbatim sections).
    pub fn to_xml(&self, out: &mut String) {
        out.push('<');
        out.push_str(&self.name);
        for (key, value) in &self.attrs {
            out.push_str(&format!(" {key}='{}'", escape(value)));
        }
        if self.children.is_empty() && self.text.is_empty() {
            out.push_str("/>");
            return;
        }
        out.push('>');
        out.push_str(&escape(&self.text));
        for child in &self.children {
            child.to_xml(out);
        }
        out.push_str(&format!("</{}>", self.name));
    }
}

pub(crate) fn escape(text: &str) -> String {
    quick_xml::escape::escape(text).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_are_named() {
        let mut root = parse("<a x='1'><b/><c y='2'/></a>").unwrap();
        assert_eq!(root.attr("x").as_deref(), Some("1"));
        let c = root.child("c").unwrap();
        assert_eq!(
            c.finish().unwrap_err().to_string(),
            "a/c@y: attribute is not supported by Vireo"
        );
        assert_eq!(
            root.finish().unwrap_err().to_string(),
            "a/b: <b> is not supported by Vireo"
        );
    }

    #[test]
    fn malformed_input_is_an_error() {
        for xml in [
            "",
            "<a>",
            "<a></b>",
            "<a/><b/>",
            "<!DOCTYPE a><a/>",
            "<a x='1' x='2'/>",
        ] {
            assert!(parse(xml).is_err(), "{xml}");
        }
        let deep = "<a>".repeat(100) + &"</a>".repeat(100);
        assert!(parse(&deep).is_err());
    }

    #[test]
    fn text_and_entities() {
        let mut root = parse("<a>x &amp; &#65;</a>").unwrap();
        assert_eq!(root.text(), "x & A");
    }
}

//! A small element writer over quick-xml, indenting as libvirt does (two spaces, single quotes).

use quick_xml::Writer;
use quick_xml::events::{BytesEnd, BytesStart, BytesText, Event};

#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    #[error("writing XML: {0}")]
    Write(String),
}

pub(crate) struct XmlWriter {
    writer: Writer<Vec<u8>>,
}

impl XmlWriter {
    pub fn new() -> XmlWriter {
        XmlWriter {
            writer: Writer::new_with_indent(Vec::new(), b' ', 2),
        }
    }

    fn write(&mut self, event: Event<'_>) -> Result<(), XmlError> {
        self.writer
            .write_event(event)
            .map_err(|err| XmlError::Write(err.to_string()))
    }

    fn start_of<'a>(name: &'a str, attrs: &[(&str, &str)]) -> BytesStart<'a> {
        let mut start = BytesStart::new(name);
        for (key, value) in attrs {
            start.push_attribute((*key, *value));
        }
        start
    }

    pub fn open(&mut self, name: &str, attrs: &[(&str, &str)]) -> Result<(), XmlError> {
        self.write(Event::Start(Self::start_of(name, attrs)))
    }

    pub fn close(&mut self, name: &str) -> Result<(), XmlError> {
        self.write(Event::End(BytesEnd::new(name)))
    }

    /// `<name attrs.../>`
    pub fn empty(&mut self, name: &str, attrs: &[(&str, &str)]) -> Result<(), XmlError> {
        self.write(Event::Empty(Self::start_of(name, attrs)))
    }

    /// `<name attrs...>text</name>`
    pub fn text(&mut self, name: &str, attrs: &[(&str, &str)], text: &str) -> Result<(), XmlError> {
        self.write(Event::Start(Self::start_of(name, attrs)))?;
        self.write(Event::Text(BytesText::new(text)))?;
        self.write(Event::End(BytesEnd::new(name)))
    }

    /// `<name>` + already-formatted XML + `</name>` (verbatim sections such as <metadata>).
    pub fn raw(&mut self, name: &str, inner_xml: &str) -> Result<(), XmlError> {
        self.write(Event::Start(BytesStart::new(name)))?;
        self.write(Event::Text(BytesText::from_escaped(inner_xml)))?;
        self.write(Event::End(BytesEnd::new(name)))
    }

    pub fn finish(self) -> String {
        let mut text = String::from_utf8_lossy(&self.writer.into_inner()).into_owned();
        // libvirt quotes attributes with single quotes.
        text = text.replace('"', "'");
        text.push('\n');
        text
    }
}

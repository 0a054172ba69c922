// Reads a TID 1500 SR the way OHIF's SR extension does (dcmjs, naturalised dataset, content tree walk)
// and prints what a viewer would show: measurement groups, their scores and verdicts, and regions.
import fs from "node:fs";
import dcmjs from "dcmjs";

const asArray = (value) => (Array.isArray(value) ? value : value === undefined ? [] : [value]);
const code = (item) => asArray(item.ConceptNameCodeSequence)[0] || {};
const isCode = (item, value, scheme) => code(item).CodeValue === value && code(item).CodingSchemeDesignator === scheme;

const bytes = fs.readFileSync(process.argv[2]);
const message = dcmjs.data.DicomMessage.readFile(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
const sr = dcmjs.data.DicomMetaDictionary.naturalizeDataset(message.dict);

const measurements = asArray(sr.ContentSequence).find((item) => isCode(item, "126010", "DCM"));
if (!measurements) throw new Error("no Imaging Measurements container");
const groups = asArray(measurements.ContentSequence).filter((item) => item.ValueType === "CONTAINER" && isCode(item, "125007", "DCM"));

const out = groups.map((group) => {
  const items = asArray(group.ContentSequence);
  const tracking = items.find((item) => isCode(item, "112039", "DCM"));
  const num = items.find((item) => item.ValueType === "NUM");
  const verdict = items.find((item) => item.ValueType === "CODE" && isCode(item, "DFN002", "99DFNODE"));
  const regions = items.filter((item) => item.ValueType === "SCOORD").map((scoord) => ({
    graphicType: scoord.GraphicType,
    points: asArray(scoord.GraphicData).map(Number),
    sopInstanceUID: asArray(asArray(scoord.ContentSequence)[0]?.ReferencedSOPSequence)[0]?.ReferencedSOPInstanceUID,
  }));
  const images = items.filter((item) => item.ValueType === "IMAGE")
    .map((image) => asArray(image.ReferencedSOPSequence)[0]?.ReferencedSOPInstanceUID);
  return {
    trackingIdentifier: tracking?.TextValue,
    score: num ? Number(asArray(num.MeasuredValueSequence)[0].NumericValue) : null,
    scoreName: num ? code(num).CodeMeaning : null,
    suspected: verdict ? asArray(verdict.ConceptCodeSequence)[0].CodeMeaning : null,
    regions,
    images,
  };
});
console.log(JSON.stringify({ seriesDescription: sr.SeriesDescription, groups: out }));

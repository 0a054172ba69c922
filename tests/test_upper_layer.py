"""dfnode's own DICOM Upper Layer acceptor, driven byte by byte: pynetdicom's encoders and decoders
stand in for the peer, so both sides of each PDU are checked against an independent implementation."""

from __future__ import annotations

import io
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import A_ASSOCIATE, ImplementationClassUIDNotification, MaximumLengthNotification
from pynetdicom.presentation import build_context
from sqlalchemy import func, select

from node.db import Instance
from node.service import Node
from scp import pdu, statuses
from scp.implementation import IMPLEMENTATION_CLASS_UID
from tests.conftest import node_config
from tests.helpers import copy_with_new_uids, ct_series, echo, real_file

VERIFICATION = "1.2.840.10008.1.1"
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"


def associate_rq(contexts: list[str], max_length: int = 16384, calling: str = "PACS", called: str = "DFNODE",
                 application_context: str = pdu.APPLICATION_CONTEXT,
                 syntaxes: tuple[str, ...] = (ImplicitVRLittleEndian, ExplicitVRLittleEndian)) -> bytes:
    """An A-ASSOCIATE-RQ as pynetdicom encodes it; context IDs 1, 3, 5, ..."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = application_context
    primitive.calling_ae_title, primitive.called_ae_title = calling, called
    proposed = []
    for n, uid in enumerate(contexts):
        context = build_context(uid, list(syntaxes))
        context.context_id = 2 * n + 1
        proposed.append(context)
    primitive.presentation_context_definition_list = proposed
    length, implementation = MaximumLengthNotification(), ImplementationClassUIDNotification()
    length.maximum_length_received = max_length
    implementation.implementation_class_uid = "1.2.826.0.1.3680043.9.3811.1"
    primitive.user_information = [length, implementation]
    rq = A_ASSOCIATE_RQ()
    rq.from_primitive(primitive)
    return bytes(rq.encode())


def message_pdus(message: C_ECHO_RQ | C_STORE_RQ, primitive: C_ECHO | C_STORE, context_id: int,
                 max_length: int) -> bytes:
    """A DIMSE request as pynetdicom puts it on the wire in P-DATA-TF PDUs."""
    message.primitive_to_message(primitive)
    out = b""
    for p_data in message.encode_msg(context_id, max_length):
        tf = P_DATA_TF()
        tf.from_primitive(p_data)
        out += bytes(tf.encode())
    return out


def echo_rq(message_id: int, context_id: int = 1, max_length: int = 16384) -> bytes:
    primitive = C_ECHO()
    primitive.MessageID, primitive.AffectedSOPClassUID = message_id, VERIFICATION
    return message_pdus(C_ECHO_RQ(), primitive, context_id, max_length)


def split_pdus(stream: bytes) -> list[bytes]:
    """A byte stream of PDUs, one PDU each."""
    pdus, position = [], 0
    while position < len(stream):
        end = position + 6 + struct.unpack_from(">I", stream, position + 2)[0]
        pdus.append(stream[position:end])
        position = end
    return pdus


class RawPeer:
    """A requestor on a plain socket: sends bytes, reads whole PDUs."""

    def __init__(self, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_pdu(self) -> tuple[int, bytes]:
        """The next PDU's type and body; (0, b"") when the node closed the connection."""
        header = self._exactly(6)
        if len(header) < 6:
            return 0, b""
        kind, length = struct.unpack(">BxI", header)
        return kind, self._exactly(length)

    def _exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            part = self.sock.recv(size - len(data))
            if not part:
                break
            data += part
        return data

    def associate(self, contexts: list[str], **options: object) -> A_ASSOCIATE_AC:
        self.send(associate_rq(contexts, **options))  # type: ignore[arg-type]
        kind, body = self.read_pdu()
        assert kind == pdu.ASSOCIATE_AC, (kind, body)
        ac = A_ASSOCIATE_AC()
        ac.decode(struct.pack(">BxI", kind, len(body)) + body)
        return ac

    def response(self) -> tuple[pydicom.Dataset, int]:
        """The next DIMSE response's command set, and the number of PDUs it came in."""
        command, pdus = b"", 0
        while True:
            kind, body = self.read_pdu()
            assert kind == pdu.P_DATA_TF, (kind, body)
            pdus += 1
            length, _context_id, control = struct.unpack_from(">IBB", body)
            command += body[6:4 + length]
            if control & 2:
                return read_dataset(DicomBytesIO(command), True, True), pdus

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def peer(running_node: Node) -> Iterator[RawPeer]:
    p = RawPeer(running_node.port)
    yield p
    p.close()


def instances(node: Node) -> int:
    with node.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(Instance)) or 0)


def test_the_ac_names_dfnode_and_answers_each_context(peer: RawPeer) -> None:
    ac = peer.associate([VERIFICATION, PATIENT_ROOT_FIND, CTImageStorage])
    results = {c.context_id: (c.result, c.transfer_syntax) for c in ac.presentation_context}
    assert results == {1: (0, ImplicitVRLittleEndian), 3: (pdu.ABSTRACT_SYNTAX_NOT_SUPPORTED, ImplicitVRLittleEndian),
                       5: (0, ImplicitVRLittleEndian)}
    assert ac.to_primitive().implementation_class_uid == IMPLEMENTATION_CLASS_UID
    assert (ac.calling_ae_title, ac.called_ae_title) == ("PACS", "DFNODE")


def test_a_response_is_split_to_fit_the_peers_maximum_pdu(peer: RawPeer) -> None:
    peer.associate([VERIFICATION], max_length=32)
    peer.send(echo_rq(7))
    command, pdus = peer.response()
    assert (command.CommandField, command.MessageIDBeingRespondedTo, command.Status) == (0x8030, 7, 0x0000)
    assert pdus > 1


def test_release_is_answered_and_the_connection_closed(peer: RawPeer) -> None:
    peer.associate([VERIFICATION])
    peer.send(echo_rq(1))
    assert peer.response()[0].Status == 0x0000
    peer.send(struct.pack(">BxI", pdu.RELEASE_RQ, 4) + bytes(4))
    assert peer.read_pdu()[0] == pdu.RELEASE_RP
    assert peer.read_pdu() == (0, b"")


def test_an_operation_other_than_echo_and_store_is_answered_unrecognised(peer: RawPeer) -> None:
    peer.associate([VERIFICATION])
    find = (struct.pack("<HHI", 0, 0x0002, 18) + b"1.2.840.10008.1.1\x00"
            + struct.pack("<HHIH", 0, 0x0100, 2, 0x0020) + struct.pack("<HHIH", 0, 0x0110, 2, 9)
            + struct.pack("<HHIH", 0, 0x0800, 2, 0x0000))
    command = struct.pack("<HHII", 0, 0, 4, len(find)) + find
    identifier = struct.pack("<HHI", 0x0010, 0x0010, 0)
    for control, value in ((3, command), (2, identifier)):
        peer.send(struct.pack(">BxIIBB", pdu.P_DATA_TF, len(value) + 6, len(value) + 2, 1, control) + value)
    response = peer.response()[0]
    assert (response.CommandField, response.MessageIDBeingRespondedTo) == (0x8020, 9)
    assert response.Status == statuses.UNRECOGNISED_OPERATION and "C-STORE" in response.ErrorComment


@pytest.mark.parametrize("garbage", [
    struct.pack(">BxI", 0x09, 2) + b"hi",  # a PDU type PS3.8 does not have
    struct.pack(">BxIIBB", pdu.P_DATA_TF, 8, 4, 3, 3) + b"\x00\x00",  # data on a context never proposed
    struct.pack(">BxIIBB", pdu.P_DATA_TF, 8, 4, 1, 3) + b"\xff\xff",  # a command set that is not one
    associate_rq([VERIFICATION]),  # a second A-ASSOCIATE-RQ
])
def test_a_protocol_error_is_aborted_and_the_node_keeps_serving(running_node: Node, peer: RawPeer,
                                                                garbage: bytes) -> None:
    peer.associate([VERIFICATION])
    peer.send(garbage)
    assert peer.read_pdu()[0] == pdu.ABORT
    assert peer.read_pdu() == (0, b"")
    assert echo(running_node.port) == 0x0000


def test_a_client_that_does_not_speak_dicom_is_dropped(running_node: Node, peer: RawPeer) -> None:
    peer.send(b"GET / HTTP/1.1\r\nHost: dfnode\r\n\r\n")
    assert peer.read_pdu()[0] == pdu.ABORT
    assert peer.read_pdu() == (0, b"")
    assert echo(running_node.port) == 0x0000


def test_an_unknown_application_context_is_rejected(peer: RawPeer) -> None:
    peer.send(associate_rq([VERIFICATION], application_context="1.2.3.4"))
    kind, body = peer.read_pdu()
    assert (kind, tuple(body[1:4])) == (pdu.ASSOCIATE_RJ, (1, 1, 2))


def _store_pdus(path: Path, max_length: int) -> tuple[bytes, bytes]:
    """The C-STORE request of a file in P-DATA-TFs, and the dataset's bytes as sent."""
    ds = pydicom.dcmread(path)
    raw = path.read_bytes()
    dataset = raw[raw.index(b"DICM") + 4:]
    meta_length = struct.unpack_from("<I", dataset, 8)[0]
    dataset = dataset[12 + meta_length:]  # after the File Meta group
    primitive = C_STORE()
    primitive.MessageID, primitive.AffectedSOPClassUID = 3, ds.SOPClassUID
    primitive.AffectedSOPInstanceUID, primitive.Priority = ds.SOPInstanceUID, 2
    primitive.DataSet = io.BytesIO(dataset)
    return message_pdus(C_STORE_RQ(), primitive, 1, max_length), dataset


def test_an_instance_in_many_small_pdus_is_spooled_byte_for_byte(tmp_path: Path, model_dir: Path,
                                                                classifiers) -> None:
    node = Node(node_config(tmp_path / "var", model_dir, node={"max_pdu_size": 4096}), classifiers).start(port=0)
    peer = RawPeer(node.port)
    try:
        path = ct_series(tmp_path / "ct", slices=1, size=256, body_part="PELVIS")[0]
        ac = peer.associate([CTImageStorage], syntaxes=(ExplicitVRLittleEndian,))
        assert ac.to_primitive().maximum_length_received == 4096
        request, dataset = _store_pdus(path, 4096)
        assert request.count(bytes([pdu.P_DATA_TF, 0])) > 30
        peer.send(request)
        assert peer.response()[0].Status == 0x0000
        spooled = next(node.config.storage.spool_dir.rglob("*.dcm")).read_bytes()
        assert spooled.endswith(dataset) and pydicom.dcmread(path).SOPInstanceUID in spooled.decode("latin-1")
        peer.send(_store_pdus(path, 0)[0])  # one P-DATA-TF longer than the 4096 bytes agreed
        assert peer.read_pdu()[0] == pdu.ABORT
    finally:
        peer.close()
        node.stop()


def test_a_peer_that_aborts_mid_dataset_stores_nothing(running_node: Node, peer: RawPeer, tmp_path: Path) -> None:
    path = copy_with_new_uids(real_file("CT_small.dcm"), tmp_path)
    peer.associate([CTImageStorage], syntaxes=(ExplicitVRLittleEndian,))
    request, _ = _store_pdus(path, 1024)
    pdus = split_pdus(request)
    peer.send(b"".join(pdus[:len(pdus) // 2]))
    peer.send(struct.pack(">BxIxxBB", pdu.ABORT, 4, 0, 0))
    assert peer.read_pdu() == (0, b"")
    peer.close()
    second = RawPeer(running_node.port)  # and a peer whose connection drops mid-dataset
    second.associate([CTImageStorage], syntaxes=(ExplicitVRLittleEndian,))
    second.send(request[:len(request) // 2])
    second.close()
    assert echo(running_node.port) == 0x0000
    assert instances(running_node) == 0 and not any(running_node.config.storage.spool_dir.rglob("*.dcm"))


def test_a_silent_peer_is_dropped_after_the_network_timeout(tmp_path: Path, model_dir: Path, classifiers) -> None:
    config = node_config(tmp_path / "var", model_dir, node={"network_timeout_seconds": 1})
    node = Node(config, classifiers).start(port=0)
    silent, associated = RawPeer(node.port), RawPeer(node.port)
    try:
        associated.associate([VERIFICATION])
        started = time.monotonic()
        assert silent.read_pdu() == (0, b"")  # never associated: the connection closes
        assert associated.read_pdu()[0] == pdu.ABORT and associated.read_pdu() == (0, b"")
        assert time.monotonic() - started < 5
        assert echo(node.port) == 0x0000
    finally:
        silent.close()
        associated.close()
        node.stop()


def test_pynetdicom_as_the_sender_through_a_small_pdu(tmp_path: Path, running_node: Node) -> None:
    """The requestor's own maximum PDU bounds the answers; its C-STOREs of compressed data arrive whole."""
    path = copy_with_new_uids(real_file("JPEG2000.dcm"), tmp_path)
    ds = pydicom.dcmread(path)
    ae = AE(ae_title="PACS")
    ae.maximum_pdu_size = 4096
    ae.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", running_node.port, ae_title="DFNODE")
    assert assoc.is_established
    assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    stored = pydicom.dcmread(next(running_node.config.storage.spool_dir.rglob("*.dcm")))
    assert stored.PixelData == ds.PixelData and stored.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID

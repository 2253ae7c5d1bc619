"""The serving benchmark's floor: a KServe model server whose model does nothing (same protocols, same
request bodies, a constant answer), so that the benchmark can tell KServe's own cost from ours.

    python -m pinrec.bench.noop --http-port 8090 --grpc-port 8091
"""

from __future__ import annotations

import argparse

from kserve import Model, ModelServer
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse


class NoOpModel(Model):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.ready = True

    async def predict(self, payload, headers=None, response_headers=None):
        if isinstance(payload, InferRequest):
            output = InferOutput(name="item_id", shape=[1], datatype="INT64", data=[0])
            return InferResponse(
                response_id=payload.id or "",
                model_name=self.name,
                infer_outputs=[output],
                from_grpc=payload.from_grpc,
            )
        return {"predictions": [{"items": []}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--http-port", type=int, default=8090)
    parser.add_argument("--grpc-port", type=int, default=8091)
    parser.add_argument("--name", default="home", help="the model name (a surface)")
    args, _ = parser.parse_known_args()
    ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, workers=1).start([NoOpModel(args.name)])


if __name__ == "__main__":
    main()

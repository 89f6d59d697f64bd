"""Token sign-in and the list of pipelines."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.authtoken.models import Token
from rest_framework.authtoken.serializers import AuthTokenSerializer
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from server.ris.api.serializers import ErrorOut, PipelineOut, TokenInput, TokenOut
from workers.engine.methods.catalogue import pipeline_catalogue


class AuthTokenObtainApi(APIView):
    """Exchange a username and password for an API token (send it as ``Authorization: Token <key>``)."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(request=TokenInput, responses={200: TokenOut, 400: ErrorOut}, auth=[])
    def post(self, request: Request) -> Response:
        serializer = AuthTokenSerializer(data=request.data, context={"request": request})
        serializer.is_valid(raise_exception=True)
        token, _ = Token.objects.get_or_create(user=serializer.validated_data["user"])
        return Response(TokenOut({"token": token.key}).data)


class PipelineListApi(APIView):
    """Pipelines a job may use, from the torch-free pipeline catalogue (the web process never loads the engine)."""

    @extend_schema(responses={200: PipelineOut(many=True)})
    def get(self, request: Request) -> Response:
        items = [
            {**entry.to_json(), "config_schema": entry.config_class().schema()}
            for entry in pipeline_catalogue().values()
        ]
        return Response(PipelineOut(sorted(items, key=lambda item: item["name"]), many=True).data)

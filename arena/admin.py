from django.contrib import admin

from arena.models import ChatAnswer, ChatRound, ChatSession, Vote

admin.site.register([ChatSession, ChatRound, ChatAnswer, Vote])

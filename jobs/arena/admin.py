from django.contrib import admin

from jobs.arena.models import ChatAnswer, ChatRound, ChatSession, Vote

admin.site.register([ChatSession, ChatRound, ChatAnswer, Vote])

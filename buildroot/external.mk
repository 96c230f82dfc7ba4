include $(sort $(wildcard $(BR2_EXTERNAL_IRON_CARRIER_PATH)/package/*/*.mk))
